"""The confirmer's batch reads on the real database: one primary-key probe per command id,
whatever the batch's and the tables' sizes (services/confirmer/store.py)."""

from __future__ import annotations

import pytest

from services.confirmer.store import (
    _DESTINATIONS,
    _LOCK_REQUESTS,
    _UPDATE_DESTINATIONS,
    _UPDATE_REQUESTS,
    PROBE_ONLY,
)
from tests.support.plans import batch_plans

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


GROW = [("requests", REQUESTS), ("destination_status", DESTINATIONS)]
IDS = "{" + ",".join(f"c-{n}" for n in range(1, 2001)) + "}"


@pytest.mark.parametrize("sql", [_LOCK_REQUESTS, _DESTINATIONS], ids=["lock_requests", "destinations"])
def test_a_batch_read_probes_the_primary_key_whatever_the_sizes(database: dict[str, str], sql: str) -> None:
    """Planned as a join of ``unnest``, a batch of a few hundred acks or more on tables of tens
    of thousands of rows became a hash join over the whole of destination_status for every
    batch. Custom plan (for the values) and generic plan (what a prepared statement may keep)
    on tables that grew to 30,000 rows since their last ANALYZE (at 300), and the generic plans
    made at 300 rows and kept as they grew: without ``PROBE_ONLY`` first, the one made on
    tables analyzed at 300 rows hashed the whole of destination_status."""
    for plan in batch_plans(database["admin"], GROW, sql, (IDS,), before=[PROBE_ONLY]):
        assert "Seq Scan" not in plan, plan
        assert "Index Scan using destination_status_pkey" in plan, plan


def _update_params(sql: str) -> tuple[str, ...]:
    stamps = "{" + ",".join(["2026-12-01T06:00:00+00:00"] * 2000) + "}"
    if sql is _UPDATE_DESTINATIONS:
        return (IDS, "{" + ",".join(["APPLIED"] * 2000) + "}", "{" + ",".join(["NULL"] * 2000) + "}", stamps)
    events = "{" + ",".join(f"evt-{n}" for n in range(1, 2001)) + "}"
    return ("2026-12-01T06:00:00+00:00", events, "{" + ",".join(["CONFIRMED"] * 2000) + "}")


@pytest.mark.parametrize(
    "sql", [_UPDATE_DESTINATIONS, _UPDATE_REQUESTS], ids=["update_destinations", "update_requests"]
)
def test_a_batch_write_probes_the_primary_key_whatever_the_sizes(database: dict[str, str], sql: str) -> None:
    """The batch's UPDATEs find their rows by primary key too, under the settings the
    confirmer sets first in the transaction (``PROBE_ONLY``): planned as they were before, they
    hashed the whole table for every batch (same sizes and plans as the reads above); with hash
    and merge joins off but sequential scans on, the UPDATE of ``requests`` kept a generic plan
    made on a new database's 300 rows that read the whole table once per request."""
    for plan in batch_plans(database["admin"], GROW, sql, _update_params(sql), before=[PROBE_ONLY]):
        assert "Seq Scan" not in plan, plan
        assert "_pkey" in plan, plan
