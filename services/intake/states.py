"""The compacted topic ``optout.suppressions``: what intake publishes there, and in which
order (I/O: PostgreSQL and the producer).

A subject's state may be changed by two chunks of one batch (written on parallel
connections) or by two intake processes (the same person's requests keyed differently land
on different partitions), and they commit in any order. Each chunk's own view of the state,
read inside its transaction, can miss the other's change; published in the wrong order, the
topic's last (and, after compaction, only) message of the subject would be stale. So once a
chunk has committed, intake reads the subjects it changed in their **current** state and
produces it **under a per-subject lock held until the broker acknowledged it**
(transaction-level advisory locks, taken in key order), on a thread and a producer of their
own while the batch's next chunks are written (issue #15). Whatever the interleaving, a
later message of a subject on the topic comes from a later read, and a later read sees every
commit before it; every commit is followed by such a read, so the last message is the state
after every commit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import psycopg

from services.common.arrays import SPLIT_TEXT, int_array, split_text, text_array
from services.common.avro import MARKER, Codec
from services.common.avro_compiled import varint
from services.common.clock import to_millis
from services.common.contract import CONCRETE_SCOPES
from services.common.db import ADVISORY_XACT_LOCKS, LazyConnection, advisory_keys
from services.common.kafka import DeliveryTracker
from services.domain.subjects import ScopeState, state_record
from services.intake.store import NO_JIT

LOCK_NAMESPACE = "optout.suppressions"

# A subject's rows in contract order (``services.domain.subjects.ordered``: the concrete
# scopes in their order, then scopes unknown to this version by name; array_position gives
# NULL for those, and NULLs sort last; by code point, as Python sorts).
# One index range scan per subject (a LATERAL subquery kept apart by OFFSET 0): as
# ``subject = ANY(...)`` over 1,000 subjects PostgreSQL read the whole table instead, 457 times
# in bench-e2e's first 40 s (tests/integration/test_intake_plans.py).
_CURRENT = (
    """
SELECT st.subject, st.scope, st.suppressed, st.since, st.event_id, st.action
FROM (SELECT DISTINCT unnest("""
    + SPLIT_TEXT
    + """) AS subject) AS u
CROSS JOIN LATERAL (
    SELECT * FROM suppression_state AS s WHERE s.subject = u.subject OFFSET 0
) AS st
ORDER BY st.subject, array_position(%s::text[], st.scope), st.scope COLLATE "C"
"""
)
_SCOPE_ORDER = text_array([s.value for s in CONCRETE_SCOPES])

# A suppression_state row as _CURRENT reads it: (subject, scope, suppressed, since, request
# id, action).
StateRow = tuple[str, str, bool, datetime, str, str]
StateEncoder = Callable[[str, Sequence[StateRow], datetime], bytes | None]

# The schema ``encode_state_v1`` writes (the codec's newest SuppressionState must be this one).
_V1 = ("dev.optout.v1.SuppressionState", 1)


def _string(value: str) -> bytes:
    """An Avro string: the zig-zag varint of its UTF-8 length, then the bytes."""
    data = value.encode()
    return varint(len(data)) + data


# A batch's states share instants (a request's requested_at in each of its scopes and
# subjects, which the statement returns far apart; the batch's updated_at) and the scope and
# action names recur: each written once. A request's rows recur within one publication (each
# encoder's own ``middles``); across publications an instant recurs only by chance, so the
# cache is small: at 65,536 instants it held about 12 MiB for good (README, "Memory through a
# backlog").
@lru_cache(maxsize=8192)
def _instant(moment: datetime) -> bytes:
    """A timestamp-millis as ``write_millis`` writes the epoch milliseconds of ``to_millis``."""
    return varint(to_millis(moment))


_name = lru_cache(maxsize=256)(_string)
_FLAG = (b"\x00", b"\x01")


def state_encoder(codec: Codec) -> StateEncoder:
    """The topic's value for a subject's rows (contract order), or None (a tombstone) when no
    scope is suppressed: ``codec.encode("SuppressionState", state_record(...))`` byte for
    byte. Written straight from the rows (no record dictionaries) while the codec's newest
    SuppressionState is version 1; through the codec otherwise."""
    latest = codec.latest("SuppressionState")
    if (latest.name, latest.version) != _V1:

        def generic(subject: str, rows: Sequence[StateRow], now: datetime) -> bytes | None:
            record = state_record(subject, [ScopeState(*row[1:]) for row in rows], now)
            return None if record is None else codec.encode("SuppressionState", record)

        return generic
    header = MARKER + latest.fingerprint
    # A row's instant and request id, encoded once per request: a request's rows recur in each
    # of its scopes and subjects (about four rows per request), all in the publication of the
    # chunk that recorded it. This encoder's own (one per ``publish_current_states``), so it
    # goes with the publication: one for the whole process, emptied only once it held
    # 65,536 requests, rose and fell by about 10 MiB over a backlog.
    middles: dict[tuple[datetime, str], bytes] = {}

    def encode_state_v1(subject: str, rows: Sequence[StateRow], now: datetime) -> bytes | None:
        for row in rows:
            if row[2]:
                break
        else:
            return None  # nothing suppressed (or no row): a tombstone
        # The scopes as one array block (its item count, the items), then the empty block.
        parts = [header, _string(subject), varint(len(rows))]
        for _, scope, suppressed, since, request_id, action in rows:
            middle = middles.get((since, request_id))
            if middle is None:
                middle = middles[(since, request_id)] = _instant(since) + _string(request_id)
            parts += (_name(scope), _FLAG[suppressed], middle, _name(action))
        parts += (b"\x00", _instant(now))
        return b"".join(parts)

    return encode_state_v1


# Subjects published per transaction: each holds one advisory lock until delivered, and
# PostgreSQL's shared lock table has max_locks_per_transaction (64) x max_connections slots
# for every session together (12,800 on the devstack): a batch of 5,000 requests names about
# 10,000 subjects, and two intakes publishing a whole batch each at once ran out of it ("out
# of shared memory", the batch retried).
STATES_PER_TRANSACTION = 1000


def publish_current_states(
    db: LazyConnection,
    tracker: DeliveryTracker,
    codec: Codec,
    topic: str,
    subjects: Collection[str],
    now: datetime,
    per_transaction: int = STATES_PER_TRANSACTION,
) -> int:
    """Read the current state of ``subjects`` and produce it to ``topic`` (key: the subject;
    a tombstone when nothing is suppressed any more), holding their locks until every
    message of ``tracker`` is delivered: ``per_transaction`` subjects at a time, each slice
    locked, read, produced and delivered in its own transaction (a subject's lock still
    covers its read and its delivery). Returns the number of states published; raises
    ``RetriableError`` (the batch is retried) when the database or the broker fails."""
    if not subjects:
        return 0
    ordered = sorted(subjects)
    encode = state_encoder(codec)

    def publish(part: list[str]) -> Callable[[psycopg.Connection[Any]], None]:
        return lambda conn: work(conn, part)

    def work(conn: psycopg.Connection[Any], part: list[str]) -> None:
        with conn.transaction():
            conn.execute(NO_JIT)  # see services.intake.store.NO_JIT
            conn.execute(ADVISORY_XACT_LOCKS, (int_array(advisory_keys(LOCK_NAMESPACE, part)),))
            states: dict[str, list[StateRow]] = {s: [] for s in part}
            for row in conn.execute(_CURRENT, (*split_text(part), _SCOPE_ORDER)).fetchall():
                states[row[0]].append(row)
            for subject, scoped in states.items():
                tracker.produce(topic, value=encode(subject, scoped, now), key=subject)
            tracker.wait()  # delivered before the locks go: the next reader's message is later

    size = max(1, per_transaction)
    for start in range(0, len(ordered), size):
        db.run(publish(ordered[start : start + size]))
    return len(ordered)
