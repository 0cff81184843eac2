-- Webhook tokens already used (Mailgun's signature token), so a captured webhook cannot be
-- replayed while its timestamp is still fresh. Shared by every inbound instance; a row
-- is useless after expires_at (the timestamp is stale by then) and is deleted lazily.
CREATE TABLE inbound_replay_tokens (
    provider      text        NOT NULL,
    token_sha256  text        NOT NULL,   -- SHA-256 hex of the provider's token
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (provider, token_sha256)
);
CREATE INDEX inbound_replay_tokens_expiry ON inbound_replay_tokens (expires_at);
