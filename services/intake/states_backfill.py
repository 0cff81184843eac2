"""Publish the whole suppression state to the compacted topic ``optout.suppressions``
(I/O: PostgreSQL and the producer).

Intake publishes a subject's state when a request changes it; states recorded before the
topic existed (older opt-outs, migration 0007's backfill) are not on it until this runs:
``optout suppression-state publish`` walks ``suppression_state``'s subjects in order, a chunk
at a time, and publishes each chunk with intake's own publisher
(``services.intake.states.publish_current_states``): under the same per-subject advisory
locks, held until the broker acknowledged the chunk, it reads the subjects' **current** state
and produces it (a tombstone for a subject suppressed for no scope). So it may run while
intake runs: whichever of the two publishes a subject later read it later, and the topic's
last message of every subject is its newest state. Idempotent (compaction keeps the newest
value per subject).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Producer

from services.common.avro import Codec
from services.common.db import LazyConnection
from services.common.kafka import DeliveryTracker, Headers, Outgoing
from services.common.settings import Settings
from services.intake.states import publish_current_states

_NEXT_SUBJECTS = "SELECT DISTINCT subject FROM suppression_state WHERE subject > %s ORDER BY subject LIMIT %s"
CHUNK = 5000


@dataclass
class _CountingTracker(DeliveryTracker):
    """A ``DeliveryTracker`` that also counts the tombstones it was given."""

    tombstones: int = 0

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        fallback: Outgoing | None = None,
    ) -> None:
        if value is None:
            self.tombstones += 1
        super().produce(topic, value, key, headers, fallback)


def _next_subjects(db: LazyConnection, after: str, chunk: int) -> list[str]:
    def read(conn: psycopg.Connection[Any]) -> list[str]:
        return [row[0] for row in conn.execute(_NEXT_SUBJECTS, (after, chunk))]

    return db.run(read)


def publish_state(
    settings: Settings,
    producer: Producer,
    codec: Codec,
    now: datetime,
    progress: Callable[[int], None] = lambda _done: None,
    chunk: int = CHUNK,
) -> tuple[int, int]:
    """Publish every subject's state; return (values, tombstones) produced. Raises
    ``RetriableError`` when the database or the broker fails (running it again is safe)."""
    tracker = _CountingTracker(producer)
    db = LazyConnection(
        settings.dsn(), autocommit=True, prepared_statements=settings.database_prepared_statements
    )
    topic = settings.suppressions_topic
    published = 0
    after = ""
    try:
        while True:
            subjects = _next_subjects(db, after, chunk)
            if not subjects:
                break
            published += publish_current_states(db, tracker, codec, topic, subjects, now)
            after = subjects[-1]
            progress(published)
    finally:
        db.close()
    return published - tracker.tombstones, tracker.tombstones
