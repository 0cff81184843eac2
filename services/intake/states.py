"""The compacted topic ``optout.suppressions``: what intake publishes there, and in which
order (I/O: PostgreSQL and the producer).

A subject's state may be changed by two chunks of one batch (written on parallel
connections) or by two intake processes (the same person's requests keyed differently land
on different partitions), and they commit in any order. Each chunk's own view of the state,
read inside its transaction, can miss the other's change; published in the wrong order, the
topic's last (and, after compaction, only) message of the subject would be stale. So once a
batch has committed, intake reads the subjects' **current** state and produces it **under a
per-subject lock held until the broker acknowledged it** (transaction-level advisory locks,
taken in key order). Whatever the interleaving, a later message of a subject on the topic
comes from a later read, and a later read sees every commit before it; every commit is
followed by such a read, so the last message is the state after every commit.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import psycopg

from services.common.avro import Codec
from services.common.db import ADVISORY_XACT_LOCKS, LazyConnection, advisory_keys
from services.common.kafka import DeliveryTracker
from services.domain.subjects import ScopeState, state_record

LOCK_NAMESPACE = "optout.suppressions"

_CURRENT = """
SELECT subject, scope, suppressed, since, event_id, action FROM suppression_state
WHERE subject = ANY(%s::text[])
"""


def publish_current_states(
    db: LazyConnection,
    tracker: DeliveryTracker,
    codec: Codec,
    topic: str,
    subjects: Collection[str],
    now: datetime,
) -> int:
    """Read the current state of ``subjects`` and produce it to ``topic`` (key: the subject;
    a tombstone when nothing is suppressed any more), holding their locks until every
    message of ``tracker`` is delivered. Returns the number of states published; raises
    ``RetriableError`` (the batch is retried) when the database or the broker fails."""
    if not subjects:
        return 0
    ordered = sorted(subjects)

    def work(conn: psycopg.Connection[Any]) -> int:
        with conn.transaction():
            conn.execute(ADVISORY_XACT_LOCKS, (advisory_keys(LOCK_NAMESPACE, ordered),))
            states: dict[str, list[ScopeState]] = {s: [] for s in ordered}
            for subject, scope, suppressed, since, event_id, action in conn.execute(_CURRENT, (ordered,)):
                states[subject].append(ScopeState(scope, suppressed, since, event_id, action))
            for subject in ordered:
                record = state_record(subject, states[subject], now)
                value = None if record is None else codec.encode("SuppressionState", record)
                tracker.produce(topic, value=value, key=subject)
            tracker.wait()  # delivered before the locks go: the next reader's message is later
        return len(ordered)

    return db.run(work)
