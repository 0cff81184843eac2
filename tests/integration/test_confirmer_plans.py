"""The confirmer's batch reads on the real database: one primary-key probe per command id,
whatever the batch's and the tables' sizes (services/confirmer/store.py)."""

from __future__ import annotations

import re

import psycopg
import pytest

from services.confirmer.store import (
    _DESTINATIONS,
    _LOCK_REQUESTS,
    _UPDATE_DESTINATIONS,
    _UPDATE_REQUESTS,
    PROBE_ONLY,
)

pytestmark = pytest.mark.integration

REQUESTS = (
    "INSERT INTO requests (event_id, content_sha256, subject_key, scopes, source, requested_at, due_at, "
    "deadline_rule) SELECT 'evt-' || g, 'x', 'k', ARRAY['EMAIL_MARKETING'], 'web', now(), now(), 'r' "
    "FROM generate_series(%s::int, %s::int) AS g"
)
DESTINATIONS = (
    "INSERT INTO destination_status (command_id, event_id, destination, first_issued_at, last_issued_at) "
    "SELECT 'c-' || g, 'evt-' || g, 'email_provider', now(), now() "
    "FROM generate_series(%s::int, %s::int) AS g"
)


def grow(conn: psycopg.Connection[tuple[object, ...]], first: int, last: int) -> None:
    conn.execute(REQUESTS, (first, last))
    conn.execute(DESTINATIONS, (first, last))


@pytest.mark.parametrize("sql", [_LOCK_REQUESTS, _DESTINATIONS], ids=["lock_requests", "destinations"])
def test_a_batch_read_probes_the_primary_key_whatever_the_sizes(database: dict[str, str], sql: str) -> None:
    """Planned as a join of ``unnest``, a batch of a few hundred acks or more on tables of tens
    of thousands of rows became a hash join over the whole of destination_status for every
    batch. Custom plan (for the values) and generic plan (what a prepared statement may keep)
    on tables that grew to 30,000 rows since their last ANALYZE (at 300)."""
    ids = "{" + ",".join(f"c-{n}" for n in range(1, 2001)) + "}"
    numbered = iter(range(1, 100))
    generic = re.sub(r"%s", lambda _m: f"${next(numbered)}", sql)
    with psycopg.connect(database["admin"], autocommit=True) as conn:
        grow(conn, 1, 300)
        conn.execute("ANALYZE requests")
        conn.execute("ANALYZE destination_status")
        grow(conn, 301, 30_000)
        custom = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN " + sql, (ids,)))
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE probe AS {generic}")
        cached = "\n".join(str(r[0]) for r in conn.execute(f"EXPLAIN EXECUTE probe('{ids}')"))
    for plan in (custom, cached):
        assert "Seq Scan" not in plan, plan
        assert "Index Scan using destination_status_pkey" in plan, plan


def _update_params(sql: str, ids: str) -> tuple[str, ...]:
    stamps = "{" + ",".join(["2026-12-01T06:00:00+00:00"] * 2000) + "}"
    if sql is _UPDATE_DESTINATIONS:
        return (ids, "{" + ",".join(["APPLIED"] * 2000) + "}", "{" + ",".join(["NULL"] * 2000) + "}", stamps)
    events = "{" + ",".join(f"evt-{n}" for n in range(1, 2001)) + "}"
    return ("2026-12-01T06:00:00+00:00", events, "{" + ",".join(["CONFIRMED"] * 2000) + "}")


@pytest.mark.parametrize(
    "sql", [_UPDATE_DESTINATIONS, _UPDATE_REQUESTS], ids=["update_destinations", "update_requests"]
)
def test_a_batch_write_probes_the_primary_key_whatever_the_sizes(database: dict[str, str], sql: str) -> None:
    """The batch's UPDATEs find their rows by primary key too, under the settings the
    confirmer sets before them (``PROBE_ONLY``): planned as they were before, they hashed the
    whole table for every batch (same sizes and plans as the reads above)."""
    ids = "{" + ",".join(f"c-{n}" for n in range(1, 2001)) + "}"
    params = _update_params(sql, ids)
    numbered = iter(range(1, 100))
    generic = re.sub(r"%s", lambda _m: f"${next(numbered)}", sql)
    with psycopg.connect(database["admin"], autocommit=True) as conn:
        grow(conn, 1, 300)
        conn.execute("ANALYZE requests")
        conn.execute("ANALYZE destination_status")
        grow(conn, 301, 30_000)
        conn.execute("BEGIN")
        conn.execute(PROBE_ONLY)
        custom = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN " + sql, params))
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE probe AS {generic}")
        literal = ", ".join("'" + p + "'" for p in params)
        cached = "\n".join(str(r[0]) for r in conn.execute(f"EXPLAIN EXECUTE probe({literal})"))
        conn.execute("ROLLBACK")
    for plan in (custom, cached):
        assert "Seq Scan" not in plan, plan
        assert "_pkey" in plan, plan
