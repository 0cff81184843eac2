-- Connectors' dedupe store: the outcome of every command a destination has applied
-- (or refused), so a re-sent command (same command_id) is acknowledged again from
-- here without being applied twice. Holds no personal data.

CREATE TABLE connector_applied (
    destination  text        NOT NULL,
    command_id   text        NOT NULL,              -- SuppressionCommand.command_id
    request_id   text        NOT NULL,
    status       text        NOT NULL
                 CHECK (status IN ('APPLIED', 'ALREADY_SUPPRESSED', 'REJECTED')),
    detail       text,                              -- provider's reason (no raw PII)
    applied_at   timestamptz NOT NULL,              -- the ack's acked_at, on every re-ack
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, command_id)
);

CREATE INDEX connector_applied_by_request ON connector_applied (request_id);
