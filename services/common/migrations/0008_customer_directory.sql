-- The customer directory (issue #12, "all means all"): what the company knows about each
-- customer, loaded by `optout customers import FILE.csv`, so intake can map a customer id or
-- any known identifier to the customer's other emails, phones and postal addresses.
-- No plaintext contact detail here: `sealed` is the customer's normalized details as JSON,
-- encrypted with the suppression list's key ring (KEY_ID.BASE64URL(nonce | AES-256-GCM
-- ciphertext | tag)), the customer id bound as associated data. Lookups go through the
-- SHA-256 hashes of the normalized identifiers in customer_directory_keys.

CREATE TABLE customer_directory (
    customer_id  text        PRIMARY KEY,
    sealed       text        NOT NULL,   -- {"emails": [...], "phones": [...], "postal_addresses": [...]}, encrypted
    identifiers  integer     NOT NULL,   -- how many emails, phones and addresses it holds
    updated_at   timestamptz NOT NULL
);

CREATE TABLE customer_directory_keys (
    kind         text NOT NULL CHECK (kind IN ('email', 'phone', 'postal')),
    sha256       text NOT NULL,          -- as suppression_list.sha256: SHA-256 hex of the normalized identifier
    customer_id  text NOT NULL REFERENCES customer_directory (customer_id) ON DELETE CASCADE,
    PRIMARY KEY (kind, sha256, customer_id)
);

CREATE INDEX customer_directory_keys_by_customer ON customer_directory_keys (customer_id);

-- What intake added to a request from the directory.
-- directory_identifiers: the raw identifiers added ({"emails": [...], "phones": [...],
--   "postal_addresses": [...]}), which the request's commands carry and the sweeper re-sends;
--   removed by `optout purge` with the request's own contact details.
-- identifier_sources: where each identifier of the request came from, without plaintext:
--   [{"kind": "email", "sha256": "...", "source": "request" | "directory",
--     "customer_id": "..."}]; kept after purge, as proof. NULL: nothing was added.
ALTER TABLE requests ADD COLUMN directory_identifiers jsonb;
ALTER TABLE requests ADD COLUMN identifier_sources jsonb;

-- An enriched request may send a destination several commands (one per email address, say),
-- each its own destination_status row: (event_id, destination) is no longer unique.
ALTER TABLE destination_status DROP CONSTRAINT IF EXISTS destination_status_event_id_destination_key;
CREATE INDEX IF NOT EXISTS destination_status_by_request ON destination_status (event_id, destination);
