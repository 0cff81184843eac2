-- The audit trail's look-ups by request (event_id) and by re-issued command (command_id) are
-- equalities only (services/common/audit.py, services/confirmer/store.py, services/web/status.py:
-- `WHERE event_id = ...`, `command_id = ...`; the timeline's ORDER BY id sorts a request's few
-- rows). Their btree indexes cost most of an audit row's insert: keys in random order (command ids
-- are UUIDs, a replay walks requests in subject order), each insert a descent to a random leaf
-- (`optout replay` writes one `replayed` row per command: 1,000,000 for a million suppressions).
-- Measured (README, "Replay to a destination", 2026-12-01 23:16 UTC, COPY of 200,000 rows into a
-- table of 500,000, backend CPU): 17.6 µs a row with the btrees, 13.8 with a hash index on
-- command_id, 10.8 with hash indexes on both (2.5 without any index). A hash index keeps a 4-byte
-- hash code per row (smaller, and no tree to descend); both are WAL-logged (PostgreSQL 10+).
DROP INDEX IF EXISTS audit_events_command;
CREATE INDEX IF NOT EXISTS audit_events_command_hash ON audit_events USING hash (command_id)
    WHERE command_id IS NOT NULL;
DROP INDEX IF EXISTS audit_events_event_id;
CREATE INDEX IF NOT EXISTS audit_events_event_id_hash ON audit_events USING hash (event_id);
