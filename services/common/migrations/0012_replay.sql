-- Replaying the active suppressions to a new or restored destination (`optout replay`,
-- services/replay). One row per run; a run is resumed from `cursor_subject` after a kill.
CREATE TABLE IF NOT EXISTS replay_runs (
    replay_id       text        PRIMARY KEY,        -- commands carry request_id 'replay:' || replay_id
    destination     text        NOT NULL,
    since           timestamptz,                    -- only suppressions since then (NULL: all)
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,                    -- NULL while the run is open (resumable)
    cursor_subject  text        NOT NULL DEFAULT '', -- last subject whose batch was delivered
    sent            bigint      NOT NULL DEFAULT 0,
    skipped         bigint      NOT NULL DEFAULT 0  -- subjects without an identifier it can use
);
-- At most one open run per destination: a second `optout replay` resumes it.
CREATE UNIQUE INDEX IF NOT EXISTS replay_runs_open ON replay_runs (destination)
    WHERE finished_at IS NULL;

-- One row per replayed command, so the confirmer matches its ack (and never confirms it:
-- replayed commands have no destination_status row and no request).
CREATE TABLE IF NOT EXISTS replay_commands (
    command_id   text        PRIMARY KEY,
    replay_id    text        NOT NULL REFERENCES replay_runs (replay_id) ON DELETE CASCADE,
    destination  text        NOT NULL,
    status       text        NOT NULL DEFAULT 'PENDING',  -- PENDING or an ack status
    detail       text,
    acked_at     timestamptz
);
CREATE INDEX IF NOT EXISTS replay_commands_by_run ON replay_commands (replay_id, status);
