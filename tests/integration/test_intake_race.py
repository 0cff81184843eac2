"""Two writers recording the same request at once (services/intake/store.py, issue #15).

``record_batch`` first writes a chunk's requests as all new (no conflict check: cheaper for
PostgreSQL), since its first read found none of them stored. When another writer records one
of them between that read and the insert, the insert waits for that writer's commit and fails
on the unique key; the transaction is then done again with the statement that skips conflicting
rows, and the request counts as a duplicate (same content) or a conflict (other content), as it
did before: never a failed chunk, never a dead letter."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.common.destinations import load_destinations
from services.common.sealing import KeyRing
from services.common.settings import DEV_SUPPRESSION_KEY
from services.domain.planning import plan_commands
from services.domain.validation import OptOutRequest, validate_request
from services.intake.store import RecordOutcome, record_batch
from tests.support.pipeline import wait_until

pytestmark = pytest.mark.integration

RING = KeyRing({"dev": DEV_SUPPRESSION_KEY}, "dev")


def _request(event_id: str, email: str, now: datetime) -> OptOutRequest:
    return validate_request(
        {
            "event_id": event_id,
            "email": email,
            "scopes": ["ALL"],
            "source": "API",
            "requested_at": now - timedelta(minutes=1),
        },
        now,
        timedelta(minutes=5),
    )


def _record(conn: psycopg.Connection[Any], requests: list[OptOutRequest], now: datetime) -> RecordOutcome:
    commands = {r.event_id: plan_commands(r, now, load_destinations()) for r in requests}
    return record_batch(conn, requests, commands, now, RING)


def _waiting_on_a_lock(watcher: psycopg.Connection[Any], pid: int) -> bool:
    row = watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.parametrize("same_content", [True, False])
def test_a_request_another_writer_records_meanwhile_is_a_duplicate_or_a_conflict(
    database: dict[str, str], same_content: bool
) -> None:
    now = datetime.now(UTC)
    event_id = f"race-{uuid.uuid4()}"
    theirs = _request(event_id, "race@example.com", now)
    ours = theirs if same_content else _request(event_id, "other@example.com", now)
    fresh = _request(f"race-{uuid.uuid4()}", "fresh@example.com", now)
    outcome: list[RecordOutcome] = []
    with (
        psycopg.connect(database["app"]) as other,
        psycopg.connect(database["app"]) as conn,
        psycopg.connect(database["app"], autocommit=True) as watcher,
    ):
        with other.transaction():  # the other writer's transaction, open until we leave this block
            assert _record(other, [theirs], now).new == {event_id}
            writer = threading.Thread(target=lambda: outcome.append(_record(conn, [fresh, ours], now)))
            writer.start()
            # Ours did not see theirs (not committed) and waits on the key in its insert.
            wait_until(
                lambda: _waiting_on_a_lock(watcher, conn.info.backend_pid), timeout=20, message="a wait"
            )
        writer.join(timeout=30)
        assert not writer.is_alive()
        (result,) = outcome
        assert result.new == {fresh.event_id}
        if same_content:
            assert result.duplicates == {event_id} and not result.conflicts
        else:
            assert result.conflicts == {event_id} and not result.duplicates
        rows = conn.execute(
            "SELECT r.event_id, r.email, count(d.command_id) FROM requests r"
            " LEFT JOIN destination_status d ON d.event_id = r.event_id GROUP BY r.event_id, r.email",
        ).fetchall()
        commands = {r.event_id: len(plan_commands(r, now, load_destinations())) for r in (theirs, fresh)}
        assert sorted(rows) == sorted(
            [
                (event_id, "race@example.com", commands[event_id]),
                (fresh.event_id, "fresh@example.com", commands[fresh.event_id]),
            ]
        )
        audited = conn.execute(
            "SELECT event_id, count(*) FILTER (WHERE step = 'recorded') FROM audit_events GROUP BY event_id"
        ).fetchall()
        assert sorted(audited) == sorted([(event_id, 1), (fresh.event_id, 1)])
