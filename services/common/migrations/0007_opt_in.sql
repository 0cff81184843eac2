-- Opting back in (issue #12): each request's action, the current state per person and
-- scope (newest wins), and what each destination last applied per person.
--
-- 1. Requests: the action (OPT_OUT or OPT_IN; every request recorded before is an opt-out),
--    the device id (pseudonymous, purged with the contact details by `optout purge`), and the
--    concrete scopes the request took effect for under the newest-wins rule: NULL for
--    requests recorded before this migration (they took effect for all their scopes), '{}'
--    for a superseded request (older than a newer request of the person for every scope; it
--    is recorded CONFIRMED with no command and no confirmation).
ALTER TABLE requests ADD COLUMN IF NOT EXISTS action text NOT NULL DEFAULT 'OPT_OUT'
    CHECK (action IN ('OPT_OUT', 'OPT_IN'));
ALTER TABLE requests ADD COLUMN IF NOT EXISTS device_id text;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS effective_scopes text[];

-- 2. The suppression state: one current state per (subject, concrete scope). A subject is a
--    pseudonymous identifier, as in subject keys: `cust:<customer id>`, `email_sha256:<hex>`,
--    `phone_sha256:<hex>`, `postal:<hex>`, `device_sha256:<hex>`. No plaintext. Written by
--    intake in the transaction that records the request, with the newest-wins guard
--    (services/domain/preferences.py): a row changes only for a request that ranks higher by
--    (requested_at, suppressed, event_id), so on the same instant the opt-out wins.
--    The primary key serves lookups by subject (all scopes of a person: one index range).
CREATE TABLE IF NOT EXISTS suppression_state (
    subject     text        NOT NULL,
    scope       text        NOT NULL
                CHECK (scope IN ('EMAIL_MARKETING', 'POSTAL_MARKETING', 'THIRD_PARTY_SHARING',
                                 'SMS_MARKETING')),
    suppressed  boolean     NOT NULL,
    since       timestamptz NOT NULL,              -- the winning request's requested_at
    event_id    text        NOT NULL,              -- the winning request (requests.event_id)
    action      text        NOT NULL CHECK (action IN ('OPT_OUT', 'OPT_IN')),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (subject, scope)
);

-- The state of the requests recorded before this migration (all opt-outs): per subject and
-- concrete scope, the newest one. Re-running this file changes nothing.
INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at)
SELECT DISTINCT ON (x.subject, x.scope) x.subject, x.scope, true, x.requested_at, x.event_id,
       'OPT_OUT', now()
FROM (
    SELECT r.event_id, r.requested_at, s.subject, c.scope
    FROM requests r
    CROSS JOIN LATERAL unnest(ARRAY['cust:' || r.customer_id, 'email_sha256:' || r.email_sha256,
                                    'phone_sha256:' || r.phone_sha256,
                                    'postal:' || r.postal_sha256]) AS s(subject)
    CROSS JOIN LATERAL unnest(CASE WHEN 'ALL' = ANY(r.scopes)
                                   THEN ARRAY['EMAIL_MARKETING', 'POSTAL_MARKETING',
                                              'THIRD_PARTY_SHARING', 'SMS_MARKETING']
                                   ELSE r.scopes END) AS c(scope)
    WHERE s.subject IS NOT NULL AND r.action = 'OPT_OUT'
      AND c.scope IN ('EMAIL_MARKETING', 'POSTAL_MARKETING', 'THIRD_PARTY_SHARING', 'SMS_MARKETING')
) x
ORDER BY x.subject, x.scope, x.requested_at DESC, x.event_id DESC
ON CONFLICT (subject, scope) DO NOTHING;

-- 3. Connectors: per destination and person (a subject as above, of the identifiers the
--    command carries), the newest request applied there. A command older than that is
--    acknowledged without calling the destination, so a late opt-in never undoes a newer
--    opt-out (services/connectors/kit.py). Holds no personal data.
CREATE TABLE IF NOT EXISTS connector_latest (
    destination   text        NOT NULL,
    subject       text        NOT NULL,
    requested_at  timestamptz NOT NULL,
    action        text        NOT NULL CHECK (action IN ('OPT_OUT', 'OPT_IN')),
    request_id    text        NOT NULL,
    applied_at    timestamptz NOT NULL,
    PRIMARY KEY (destination, subject)
);
