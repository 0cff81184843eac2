-- `optout replay` writes its per-command rows (replay_commands before producing a batch, the
-- `replayed` audit rows after its delivery) with one INSERT ... SELECT over the batch's
-- subject range of suppression_state, read in the same snapshot as the batch itself, instead
-- of sending PostgreSQL every command id (services/replay/run.py). The command id of a
-- replayed command is a UUIDv5 (RFC 4122 section 4.3) of the namespace COMMAND_NAMESPACE
-- (services/domain/planning.py) and 'replay:<replay id>' 0x1f '<destination>' 0x1f
-- '<subject>' (services/replay/plan.py, replay_command_id); uuid-ossp's uuid_generate_v5
-- computes the same (tests/integration/test_replay_sql.py proves it). uuid-ossp is a trusted
-- extension: the owner of the database (the role running the migrations) may create it.
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE OR REPLACE FUNCTION replay_command_id(replay_id text, destination text, subject text)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT uuid_generate_v5('6f1d8a9e-3c5b-4e57-9b0e-2f6c1a7d4e80'::uuid,
                            'replay:' || replay_id || chr(31) || destination || chr(31) || subject)::text
$$;
