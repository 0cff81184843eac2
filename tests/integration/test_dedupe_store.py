"""The connectors' dedupe store on the real database: its pipelined round trips keep the
transaction semantics of ``serialized`` (locks held from the first statement to the commit
``record`` sends, nothing kept when the block raises) and of ``record`` alone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from services.common.contract import AckStatus, Action
from services.connectors.dedupe import _LATEST, _LOOKUP, _READ, DedupeStore, Latest, StoredOutcome, lock_key
from tests.support.pipeline import wait_until
from tests.support.plans import batch_plans

NOW = datetime(2026, 12, 1, 6, 0, 0, tzinfo=UTC)
SUBJECT = "cust:C-1"


def outcome(command_id: str) -> StoredOutcome:
    return StoredOutcome(command_id, f"evt-{command_id}", AckStatus.APPLIED, None, NOW)


def newest(request_id: str) -> Latest:
    return Latest(SUBJECT, NOW, Action.OPT_OUT, request_id)


def lock_is_free(dsn: str) -> bool:
    """Whether another session can take the person's lock at once (and give it back)."""
    with psycopg.connect(dsn, autocommit=True) as other:
        row = other.execute(
            "SELECT pg_try_advisory_lock(%s)", (lock_key("email_provider", SUBJECT),)
        ).fetchone()
        free = bool(row and row[0])
        if free:
            other.execute("SELECT pg_advisory_unlock(%s)", (lock_key("email_provider", SUBJECT),))
    return free


def stored(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as other:
        return {r[0] for r in other.execute("SELECT command_id FROM connector_applied").fetchall()}


def test_a_block_holds_the_lock_from_its_first_statement_to_records_commit(
    base_settings: dict[str, Any],
) -> None:
    dsn = base_settings["database_url"]
    store = DedupeStore(dsn, "email_provider")
    try:
        with store.serialized([SUBJECT]):
            assert store.latest([SUBJECT]) == {}  # BEGIN, the lock and the read: one round trip
            assert not lock_is_free(dsn)
            assert stored(dsn) == set()
            result = store.record([outcome("c-1")], [newest("evt-c-1")])  # and the COMMIT
            assert set(result) == {"c-1"}
            assert stored(dsn) == {"c-1"} and lock_is_free(dsn)
            with pytest.raises(RuntimeError, match="after record"):
                store.latest([SUBJECT])
        assert store.latest([SUBJECT])[SUBJECT].request_id == "evt-c-1"
        assert set(store.lookup(["c-1", "c-2"])) == {"c-1"}
    finally:
        store.close()


def test_a_block_that_raises_keeps_nothing_and_releases_the_lock(base_settings: dict[str, Any]) -> None:
    dsn = base_settings["database_url"]
    store = DedupeStore(dsn, "email_provider")
    try:
        with pytest.raises(ValueError), store.serialized([SUBJECT]):
            store.latest([SUBJECT])
            assert not lock_is_free(dsn)
            raise ValueError("the destination call failed")
        assert lock_is_free(dsn) and stored(dsn) == set()
        # a block that only read commits its (empty) transaction and frees the lock
        with store.serialized([SUBJECT]):
            store.latest([SUBJECT])
        assert lock_is_free(dsn)
        # outside a block, record is its own transaction: first writer wins
        assert store.record([outcome("c-9")])["c-9"].status is AckStatus.APPLIED
        again = StoredOutcome("c-9", "evt-c-9", AckStatus.REJECTED, "later", NOW)
        assert store.record([again])["c-9"].status is AckStatus.APPLIED
        assert stored(dsn) == {"c-9"}
    finally:
        store.close()


def waiting_for_a_lock(dsn: str) -> bool:
    """Whether some session of this database waits for an advisory lock."""
    with psycopg.connect(dsn, autocommit=True) as other:
        row = other.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return bool(row and row[0])


def test_a_blocks_read_takes_the_locks_first_and_sees_what_the_last_holder_recorded(
    base_settings: dict[str, Any],
) -> None:
    """``read`` (the lookup and the newest applied, in the round trip of BEGIN and the locks)
    runs after the locks are held: an instance that waited for another one's block sees the
    command that block recorded, and does not apply it again (issue #15 folded the lookup,
    which came before the block, into it)."""
    dsn = base_settings["database_url"]
    first, second = DedupeStore(dsn, "email_provider"), DedupeStore(dsn, "email_provider")
    seen: list[tuple[set[str], set[str]]] = []

    def waiter() -> None:
        with second.serialized([SUBJECT]):
            known, latest = second.read(["c-1", "c-2"], [SUBJECT])
            seen.append((set(known), {x.request_id for x in latest.values()}))

    try:
        with first.serialized([SUBJECT]):
            assert first.read(["c-1"], [SUBJECT]) == ({}, {})
            thread = threading.Thread(target=waiter)
            thread.start()
            wait_until(lambda: waiting_for_a_lock(dsn), timeout=10, message="the second block to wait")
            first.record([outcome("c-1")], [newest("evt-c-1")])
        thread.join(10)
        assert seen == [({"c-1"}, {"evt-c-1"})]
        assert lock_is_free(dsn)
        assert first.read([], []) == ({}, {})
    finally:
        first.close()
        second.close()


GROWN = {
    "connector_applied": "INSERT INTO connector_applied (destination, command_id, request_id, status, "
    "detail, applied_at) SELECT 'email_provider', 'c-' || g, 'evt-' || g, 'APPLIED', NULL, now() "
    "FROM generate_series(%s::int, %s::int) AS g",
    "connector_latest": "INSERT INTO connector_latest (destination, subject, requested_at, action, "
    "request_id, applied_at) SELECT 'email_provider', 'c-' || g, now(), 'OPT_OUT', 'evt-' || g, now() "
    "FROM generate_series(%s::int, %s::int) AS g",
}


def plans(admin_dsn: str, table: str, sql: str) -> list[str]:
    """The plans of ``sql`` for a batch of 2,000 ids (custom and generic) on a table that grew
    to 30,000 rows since its last ANALYZE (at 300 rows)."""
    ids = "{" + ",".join(f"c-{n}" for n in range(1, 2001)) + "}"
    return batch_plans(admin_dsn, [(table, GROWN[table])], sql, (ids, "email_provider"))


@pytest.mark.parametrize(
    ("table", "sql"),
    [("connector_applied", _LOOKUP), ("connector_latest", _LATEST)],
    ids=["lookup", "latest"],
)
def test_a_batch_read_probes_the_primary_key_whatever_the_sizes(
    database: dict[str, str], table: str, sql: str
) -> None:
    """A batch's reads are one index probe per id. Planned as a join of ``unnest``, a batch of a
    few hundred ids or more on a table of tens of thousands of rows became a hash join over the
    whole table for every batch: bench-e2e's first minute saw 1,874 sequential scans of
    connector_applied reading 37 million rows, and a p99 that climbed as batches grew."""
    for plan in plans(database["admin"], table, sql):
        assert f"Seq Scan on {table}" not in plan, plan
        assert "Index Scan" in plan, plan


def test_the_combined_read_probes_both_primary_keys_whatever_the_sizes(database: dict[str, str]) -> None:
    """``read``'s one statement (the lookup and the newest applied) keeps each part's probes."""
    ids = "{" + ",".join(f"c-{n}" for n in range(1, 2001)) + "}"
    grow = [(t, GROWN[t]) for t in ("connector_applied", "connector_latest")]
    for plan in batch_plans(database["admin"], grow, _READ, (ids, "email_provider", ids, "email_provider")):
        assert "Seq Scan on connector_applied" not in plan, plan
        assert "Seq Scan on connector_latest" not in plan, plan
        assert plan.count("Index Scan") >= 2, plan


def test_record_answers_the_first_writers_outcome_and_keeps_any_detail(
    base_settings: dict[str, Any],
) -> None:
    """``record`` returns what is stored for every id: the batch's own outcome where it was
    first (its detail clipped as stored, whatever characters it holds), the other writer's
    where another instance recorded the same command first; and ``lookup`` reads the same."""
    dsn = base_settings["database_url"]
    first, second = DedupeStore(dsn, "email_provider"), DedupeStore(dsn, "email_provider")
    odd = 'a, "quoted" {brace} back\\slash\x00 NULL null ' + "x" * 600
    later = datetime(2026, 12, 1, 7, 0, 0, 123456, tzinfo=UTC)
    try:
        won = StoredOutcome("c-1", "evt-1", AckStatus.REJECTED, "first writer", NOW)
        assert first.record([won]) == {"c-1": won}
        mine = [
            StoredOutcome("c-1", "evt-1", AckStatus.APPLIED, None, later),
            StoredOutcome("c-2", "evt-2", AckStatus.REJECTED, odd, later),
            StoredOutcome("c-3", "evt-3", AckStatus.APPLIED, "", later),
        ]
        result = second.record(mine)
        clipped = odd.replace("\x00", " ")[:500]
        assert result == {
            "c-1": won,
            "c-2": StoredOutcome("c-2", "evt-2", AckStatus.REJECTED, clipped, later),
            "c-3": mine[2],
        }
        assert first.lookup(["c-1", "c-2", "c-3", "c-4"]) == result
    finally:
        first.close()
        second.close()
