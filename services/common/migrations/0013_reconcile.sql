-- Reconciliation (issue #13, `optout reconcile --destination NAME`): the last drift report
-- of each destination, which the exporter exports as gauges (optout_reconcile_missing,
-- optout_reconcile_unknown, optout_reconcile_last_run_timestamp_seconds). Counts only: no
-- identifier, no hash.
CREATE TABLE IF NOT EXISTS reconcile_reports (
    destination  text        PRIMARY KEY,
    kind         text        NOT NULL,
    ran_at       timestamptz NOT NULL,
    expected     integer     NOT NULL,   -- suppressed in our state for the destination's scopes
    present      integer     NOT NULL,   -- entries read back from the destination
    missing      integer     NOT NULL,   -- expected, absent at the destination
    unknown      integer     NOT NULL,   -- at the destination, not suppressed in our state
    reissued     integer     NOT NULL,   -- missing ones re-issued as commands
    unsendable   integer     NOT NULL    -- missing ones with no value in the suppression list
);
