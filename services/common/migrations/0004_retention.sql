-- Retention and privacy (issue #10).
--
-- 1. Subject keys carry no raw contact detail any more: `email:<normalized email>` and
--    `phone:<E.164>` written before become `email_sha256:<hex>` / `phone_sha256:<hex>`, the
--    SHA-256 of the same UTF-8 text (what services/domain/identity.py `subject_key` writes).
--    `cust:` and `postal:` keys are unchanged. Re-running this file changes nothing.
UPDATE requests
SET subject_key = 'email_sha256:' || encode(sha256(convert_to(substr(subject_key, 7), 'UTF8')), 'hex')
WHERE subject_key LIKE 'email:%';

UPDATE requests
SET subject_key = 'phone_sha256:' || encode(sha256(convert_to(substr(subject_key, 7), 'UTF8')), 'hex')
WHERE subject_key LIKE 'phone:%';

-- 2. A request that needs attention (a destination refused it) is resolved by a person with
--    `optout resolve EVENT_ID --note TEXT`: when, and why (an operator's note, no PII).
--    `optout purge` then treats it like a confirmed request (from resolved_at); until then
--    it shows in `optout overdue` and a gauge once older than the retention period.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS resolved_at timestamptz;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS resolution_note text;

CREATE INDEX IF NOT EXISTS requests_unresolved_attention ON requests (received_at)
    WHERE state = 'NEEDS_ATTENTION' AND resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS requests_resolved_unpurged ON requests (resolved_at)
    WHERE resolved_at IS NOT NULL AND pii_purged_at IS NULL;
