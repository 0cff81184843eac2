-- Audit trail (issue #13, "proof of compliance"): an append-only history per request,
-- written in the same transactions as the steps it records (services/common/audit.py).
-- No raw contact details: event ids, destinations, statuses, command ids and redacted
-- provider details only. Kept OPTOUT_AUDIT_RETENTION_DAYS (730: CCPA regulations section
-- 7101) by `optout purge`, independently of the contact-details purge. The application role
-- loses UPDATE on it (services/common/db.py, _grant_dml); DELETE stays for the purge.
CREATE TABLE IF NOT EXISTS audit_events (
    id          bigserial   NOT NULL,  -- no primary key: one index less to maintain per row
    event_id    text        NOT NULL,
    at          timestamptz NOT NULL,
    step        text        NOT NULL,
    destination text        NULL,
    status      text        NULL,
    detail      text        NULL
);
CREATE INDEX IF NOT EXISTS audit_events_event_id ON audit_events (event_id, id);
CREATE INDEX IF NOT EXISTS audit_events_at ON audit_events (at);
