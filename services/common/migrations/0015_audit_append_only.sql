-- The audit trail is append-only for the application role (issue #13): `optout migrate`
-- revokes UPDATE, DELETE and TRUNCATE on audit_events from OPTOUT_DATABASE_APP_ROLE
-- (services/common/db.py, _grant_dml). Expired rows are deleted only through
-- purge_audit_events(retention_days), a SECURITY DEFINER function owned by the role that runs
-- the migrations: it deletes rows older than the database's now() minus retention_days, and
-- refuses a retention below the floor in audit_retention_floor (730 days: CCPA regulations
-- section 7101). Only the migration owner can change the floor (the app role may read it):
--     UPDATE audit_retention_floor SET min_days = 365;   -- as the admin role
CREATE TABLE IF NOT EXISTS audit_retention_floor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    min_days integer NOT NULL CHECK (min_days >= 0)
);
INSERT INTO audit_retention_floor (min_days) VALUES (730) ON CONFLICT (only_row) DO NOTHING;

-- Commands re-sent without a request of their own (`optout reconcile`'s `reconcile:` and
-- `optout replay`'s `replay:` commands) are written into the audit trail of the request(s)
-- whose suppression they carry (the winning requests of suppression_state), with the command
-- id in command_id, so the confirmer writes the command's acks into the same trails. Only those
-- rows set it (a partial index: intake's rows pay nothing for it).
ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS command_id text NULL;
CREATE INDEX IF NOT EXISTS audit_events_command ON audit_events (command_id)
    WHERE command_id IS NOT NULL;

CREATE OR REPLACE FUNCTION purge_audit_events(retention_days integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    floor_days integer;
    removed bigint;
BEGIN
    SELECT min_days INTO floor_days FROM public.audit_retention_floor;
    floor_days := coalesce(floor_days, 730);
    IF retention_days IS NULL OR retention_days < floor_days THEN
        RAISE EXCEPTION 'audit events are kept at least % days (audit_retention_floor), % asked',
            floor_days, retention_days USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM public.audit_events WHERE at < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END
$$;
REVOKE ALL ON FUNCTION purge_audit_events(integer) FROM PUBLIC;

-- Reconciliation of a mail house reads the export it publishes (a snapshot): when that
-- snapshot was written (NULL for destinations read live), exported as
-- optout_reconcile_source_timestamp_seconds (alert OptoutReconcileExportStale).
ALTER TABLE reconcile_reports ADD COLUMN IF NOT EXISTS source_written_at timestamptz NULL;
