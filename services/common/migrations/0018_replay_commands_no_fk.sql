-- `optout replay` records one replay_commands row per command before producing it (the
-- confirmer matches its ack there). The foreign key to replay_runs cost a per-row trigger
-- (a lookup and a FOR KEY SHARE lock of the same run row): about 9.5 of the 12.5 µs each
-- row took to insert, the largest single cost of a replay (README, "Replay to a
-- destination"). The replayer is the only writer and inserts the run before its commands;
-- nothing deletes runs (the ON DELETE CASCADE was never used). replay_commands_by_run
-- (replay_id, status) still serves "the commands of a run".
ALTER TABLE replay_commands DROP CONSTRAINT IF EXISTS replay_commands_replay_id_fkey;
