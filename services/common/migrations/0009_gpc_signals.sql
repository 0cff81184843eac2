-- Global Privacy Control: every time the web service applied a `Sec-GPC: 1` signal
-- (services/web/gpclog.py), so that it can be shown to a regulator that the signal was
-- honoured (CCPA regulations, Cal. Code Regs. tit. 11, § 7025; records kept 24 months,
-- § 7101). No raw identifier and no IP address: the device or customer as SHA-256 of
-- "device:<id>" / "customer:<id>", the request it became (event_id, which the requests
-- table follows to its confirmation) and a coarse browser family.
-- `optout purge` deletes rows older than OPTOUT_GPC_LOG_RETENTION_DAYS (730).

CREATE TABLE gpc_signals (
    id                 bigserial   PRIMARY KEY,
    seen_at            timestamptz NOT NULL,
    subject_kind       text        NOT NULL CHECK (subject_kind IN ('device', 'customer')),
    subject_sha256     text        NOT NULL CHECK (subject_sha256 ~ '^[0-9a-f]{64}$'),
    event_id           text        NOT NULL,   -- the OptOutRequested it became
    published          boolean     NOT NULL,   -- false: this instance had sent it already
    jurisdiction       text,
    user_agent_family  text        NOT NULL    -- e.g. Firefox, Chrome; no version or platform
);

CREATE INDEX gpc_signals_seen_at ON gpc_signals (seen_at);
CREATE INDEX gpc_signals_subject ON gpc_signals (subject_sha256, seen_at);
