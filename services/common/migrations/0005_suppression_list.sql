-- The suppression list: the minimal identifier of every suppressed person, kept in this
-- one place (not purged by retention), encrypted at rest. No plaintext in this table:
-- `sealed` is KEY_ID.BASE64URL(nonce | AES-256-GCM ciphertext | tag) of the normalized
-- identifier, with the kind and hash of its row bound as associated data. Written by intake
-- in the transaction that records the request; removed by `optout erase`.

CREATE TABLE suppression_list (
    kind              text        NOT NULL CHECK (kind IN ('email', 'phone', 'postal')),
    sha256            text        NOT NULL,   -- SHA-256 hex of the normalized identifier
    sealed            text        NOT NULL,   -- the identifier, encrypted (see above)
    scopes            text[]      NOT NULL,   -- every scope ever requested for it
    first_request_id  text        NOT NULL,   -- requests.event_id that created the entry
    last_request_id   text        NOT NULL,   -- the latest one recorded
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (kind, sha256)
);

-- The hash of a request's normalized postal address (sha256 of postal_key), so that an
-- erasure by customer id finds the postal entry after the address itself has been purged.
ALTER TABLE requests ADD COLUMN postal_sha256 text;
