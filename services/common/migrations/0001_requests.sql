-- Requests and each destination's state. One row per opt-out request (event_id),
-- one row per (request, destination) command.

CREATE TABLE requests (
    event_id        text PRIMARY KEY,
    content_sha256  text        NOT NULL,          -- detects a re-used event_id with other content
    subject_key     text        NOT NULL,
    customer_id     text,
    email           text,                          -- raw contact details: removed by `optout purge`
    phone           text,
    postal_address  jsonb,
    email_sha256    text,                          -- kept after purge, to keep suppressing and prove it
    phone_sha256    text,
    scopes          text[]      NOT NULL,
    source          text        NOT NULL,
    jurisdiction    text,
    requested_at    timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    due_at          timestamptz NOT NULL,
    deadline_rule   text        NOT NULL,
    state           text        NOT NULL DEFAULT 'PENDING'
                    CHECK (state IN ('PENDING', 'CONFIRMED', 'NEEDS_ATTENTION')),
    confirmed_at    timestamptz,
    pii_purged_at   timestamptz
);

CREATE INDEX requests_open_by_due ON requests (due_at) WHERE state <> 'CONFIRMED';

CREATE TABLE destination_status (
    command_id       text PRIMARY KEY,              -- uuid5(event_id, destination)
    event_id         text        NOT NULL REFERENCES requests (event_id) ON DELETE CASCADE,
    destination      text        NOT NULL,
    status           text        NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'APPLIED', 'ALREADY_SUPPRESSED', 'REJECTED')),
    detail           text,
    first_issued_at  timestamptz NOT NULL,
    last_issued_at   timestamptz NOT NULL,
    issue_count      integer     NOT NULL DEFAULT 1,
    acked_at         timestamptz,
    UNIQUE (event_id, destination)
);

CREATE INDEX destination_status_pending ON destination_status (last_issued_at)
    WHERE status = 'PENDING';
