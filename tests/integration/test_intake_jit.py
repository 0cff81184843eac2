"""Intake's transactions run without PostgreSQL's JIT compiler (``services.intake.store.NO_JIT``,
issue #15): compiling its batch statements cost more than running them. ``SET LOCAL``: the
setting ends with the transaction, the connection's own stays as it was."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.common.avro import default_codec
from services.common.db import LazyConnection
from services.common.destinations import load_destinations
from services.common.kafka import DeliveryTracker, make_producer
from services.common.sealing import KeyRing
from services.common.settings import DEV_SUPPRESSION_KEY
from services.domain.planning import plan_commands
from services.domain.validation import validate_request
from services.intake.states import publish_current_states
from services.intake.store import record_batch
from tests.support.pipeline import isolated_settings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RING = KeyRing({"dev": DEV_SUPPRESSION_KEY}, "dev")


def _jit(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW jit").fetchone()
    assert row is not None
    return str(row[0])


class _Held(LazyConnection):
    """The test's own connection, inside its open transaction (the work's is a savepoint)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__("")
        self._held = conn

    def get(self) -> psycopg.Connection[Any]:
        return self._held


def test_recording_a_chunk_runs_without_jit_leaving_the_session_as_it_was(database: dict[str, str]) -> None:
    request = validate_request(
        {
            "event_id": f"jit-{uuid.uuid4()}",
            "scopes": ["ALL"],
            "source": "API",
            "requested_at": NOW - timedelta(minutes=1),
            "email": "jit@example.com",
        },
        NOW,
        timedelta(minutes=5),
    )
    commands = {request.event_id: plan_commands(request, NOW, load_destinations())}
    with psycopg.connect(database["app"]) as conn:
        before = _jit(conn)
        conn.commit()
        with conn.transaction():  # record_batch's own transaction becomes a savepoint of it
            outcome = record_batch(conn, [request], commands, NOW, RING)
            assert outcome.new == {request.event_id}
            assert _jit(conn) == "off"
        assert _jit(conn) == before


def test_publishing_states_runs_without_jit_leaving_the_session_as_it_was(
    base_settings: dict[str, Any],
) -> None:
    cfg = isolated_settings(base_settings)
    with psycopg.connect(cfg.dsn()) as conn:
        before = _jit(conn)
        conn.commit()
        with conn.transaction():
            published = publish_current_states(
                _Held(conn),
                DeliveryTracker(make_producer(cfg)),
                default_codec(),
                cfg.suppressions_topic,
                ["email_sha256:jit"],
                NOW,
            )
            assert published == 1
            assert _jit(conn) == "off"
        assert _jit(conn) == before
