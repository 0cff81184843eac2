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
