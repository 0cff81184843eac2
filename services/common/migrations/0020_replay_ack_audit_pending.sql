-- The `acknowledged` audit row of a replayed command is written by whichever of the confirmer
-- and the replayer comes second (services/common/audit.py, "Acks that beat their command's
-- audit row"): the confirmer joins the command's `replayed` audit row, but the replayer writes
-- that row only after the batch's delivery reports, and a connector can ack sooner. The
-- confirmer records such an ack in replay_commands with audit_pending = true (no `replayed`
-- row yet, seen under a per-destination advisory lock the replayer takes exclusively); after
-- writing a batch's `replayed` rows, the replayer takes that lock and writes the
-- `acknowledged` rows of its run's pending acks, then clears the flag. The partial index
-- holds only the pending rows (usually none), so the replayer's look-up costs nothing per
-- command. ADD COLUMN with a constant default does not rewrite the table.
ALTER TABLE replay_commands ADD COLUMN IF NOT EXISTS audit_pending boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS replay_commands_audit_pending ON replay_commands (replay_id)
    WHERE audit_pending;
