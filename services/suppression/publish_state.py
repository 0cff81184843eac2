"""Publish the whole suppression state to the compacted topic ``optout.suppressions``.

Intake publishes a subject's state when a request changes it; states recorded before the
topic existed (older opt-outs, migration 0007's backfill) are not on it until this runs:
``optout suppression-state publish`` reads ``suppression_state`` in subject order (a
server-side cursor, a chunk at a time) and produces each subject's state, a tombstone for a
subject suppressed for no scope, waiting for every delivery report. Idempotent (compaction
keeps the newest value per subject). Run it once when upgrading, before intake publishes
(a state intake publishes while this runs could be followed by this command's older read of
it; running it again, intake stopped, settles that).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import psycopg
from confluent_kafka import Producer

from services.common.avro import Codec
from services.common.kafka import DeliveryTracker
from services.common.settings import Settings
from services.domain.subjects import ScopeState, state_record

_ALL = "SELECT subject, scope, suppressed, since, event_id, action FROM suppression_state ORDER BY subject"
CHUNK = 5000


def publish_state(
    settings: Settings,
    producer: Producer,
    codec: Codec,
    now: datetime,
    progress: Callable[[int], None] = lambda _done: None,
) -> tuple[int, int]:
    """Publish every subject's state; return (values, tombstones) produced."""
    values = tombstones = 0
    tracker = DeliveryTracker(producer)
    subject: str | None = None
    states: list[ScopeState] = []

    def flush_subject() -> None:
        nonlocal values, tombstones
        if subject is None:
            return
        record = state_record(subject, states, now)
        value = None if record is None else codec.encode("SuppressionState", record)
        tracker.produce(settings.suppressions_topic, value=value, key=subject)
        if value is None:
            tombstones += 1
        else:
            values += 1

    with (
        psycopg.connect(settings.dsn(), application_name="optout-publish-state") as conn,
        conn.cursor(name="suppression_state_all") as cur,
    ):
        cur.itersize = CHUNK
        cur.execute(_ALL)
        for row_subject, scope, suppressed, since, event_id, action in cur:
            if row_subject != subject:
                flush_subject()
                subject, states = row_subject, []
                if (values + tombstones) and (values + tombstones) % CHUNK == 0:
                    progress(values + tombstones)
            states.append(ScopeState(scope, suppressed, since, event_id, action))
        flush_subject()
    tracker.wait(timeout=120)
    progress(values + tombstones)
    return values, tombstones
