"""The connectors' dedupe store: one row per (destination, command_id) with its outcome.

Pure part: ``first_of_each`` (which commands of a batch are distinct). I/O part:
``DedupeStore`` (PostgreSQL, table ``connector_applied``, migration 0003).

Ordering in ``ConnectorStep.submit`` and why:

1. look up the batch's command ids here (holding the people's locks, with the newest applied
   per person: one round trip, ``read``);
2. ``apply`` only the ones without a stored outcome;
3. **commit their outcomes here** (one transaction);
4. publish one ack per delivered message and wait for every delivery report;
5. return, and the loop commits the offsets.

A crash after 3 re-acknowledges from the stored outcome on redelivery and never calls
``apply`` again. A crash between 2 and 3 (apply done, outcome not committed) is the one
window in which a command is applied a second time; no ordering closes it, because the
destination and PostgreSQL cannot commit together. Recording *before* applying would
only turn that window into "recorded but never applied", i.e. a false acknowledgement,
which is worse for an opt-out. So every connector's ``apply`` is idempotent per command
(the email provider's add-to-unsubscribes is a set union; partners key opt-outs by the
command id; the mail house file is de-duplicated by command id before it is rewritten).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from services.common.arrays import text_array
from services.common.contract import AckStatus, Action
from services.common.db import ADVISORY_XACT_LOCKS, LazyConnection, advisory_key, advisory_keys
from services.common.errors import RetriableError

MAX_DETAIL_LENGTH = 500


class HasCommandId(Protocol):
    @property
    def command_id(self) -> str: ...


T = TypeVar("T", bound=HasCommandId)


@dataclass(frozen=True)
class StoredOutcome:
    """A command's recorded outcome; what every acknowledgement of it says."""

    command_id: str
    request_id: str
    status: AckStatus
    detail: str | None
    applied_at: datetime


@dataclass(frozen=True)
class Latest:
    """The newest request applied at a destination for one person (subject key)."""

    subject: str
    requested_at: datetime
    action: Action
    request_id: str

    @property
    def rank(self) -> tuple[datetime, bool, str]:
        """Newest first; on the same instant the opt-out (services/domain/preferences.py)."""
        return (self.requested_at, self.action is Action.OPT_OUT, self.request_id)


def first_of_each(commands: Iterable[T]) -> list[T]:
    """The first occurrence of each command id, in batch order."""
    seen: set[str] = set()
    unique = []
    for command in commands:
        if command.command_id not in seen:
            seen.add(command.command_id)
            unique.append(command)
    return unique


def clip_detail(detail: str | None) -> str | None:
    if detail is None:
        return None
    return detail.replace("\x00", " ")[:MAX_DETAIL_LENGTH]


# A batch's reads probe the primary key once per id: each id is a LATERAL subquery (with
# LIMIT 1, so the planner can neither pull it up into a join nor hash it). ``= ANY(array)``
# with a generic plan can test every row against the whole array; a plain join of ``unnest``
# is planned as a hash join over the whole table once a batch holds a few hundred ids and the
# table tens of thousands of rows (the cost model's random_page_cost, while the table is in
# memory): bench-e2e's first minute saw 1,874 sequential scans of connector_applied reading
# 37 million rows, and a p99 that climbed as batches grew. The subquery keeps the probe.
_LOOKUP = """
SELECT a.command_id, a.request_id, a.status, a.detail, a.applied_at
FROM unnest(%s::text[]) AS u(command_id)
CROSS JOIN LATERAL (
    SELECT * FROM connector_applied AS c
    WHERE c.destination = %s AND c.command_id = u.command_id LIMIT 1
) AS a
"""

# DO UPDATE (a no-op) rather than DO NOTHING so RETURNING also yields the row that won
# when another instance recorded the same command first: every ack then agrees. Only the rows
# that differ from the batch's own outcomes come back (usually none): the caller already
# holds the rest, and parsing 5 columns of every row cost more than the insert (issue #15).
_RECORD = """
WITH t AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
        AS t(c, r, s, d, a)
), stored AS (
    INSERT INTO connector_applied (destination, command_id, request_id, status, detail,
                                   applied_at)
    SELECT %s, c, r, s, d, a FROM t
    ON CONFLICT (destination, command_id) DO UPDATE SET destination = connector_applied.destination
    RETURNING command_id, request_id, status, detail, applied_at
)
SELECT stored.* FROM stored JOIN t ON t.c = stored.command_id
WHERE (stored.request_id, stored.status, stored.detail, stored.applied_at)
      IS DISTINCT FROM (t.r, t.s, t.d, t.a)
"""


_LATEST = """
SELECT l.subject, l.requested_at, l.action, l.request_id
FROM unnest(%s::text[]) AS u(subject)
CROSS JOIN LATERAL (
    SELECT * FROM connector_latest AS c WHERE c.destination = %s AND c.subject = u.subject LIMIT 1
) AS l
"""

# ``read``: the lookup and the newest applied in one statement (one Parse/Bind/Execute and one
# result instead of two, issue #15), each part probing its primary key as above; a row says
# which part it comes from ('c': a stored outcome, 'l': a person's newest applied request).
_READ = f"""
SELECT 'c', a.command_id, a.request_id, a.status, a.detail, a.applied_at
FROM ({_LOOKUP}) AS a
UNION ALL
SELECT 'l', l.subject, l.request_id, l.action, NULL, l.requested_at
FROM ({_LATEST}) AS l
"""

# Newest wins (the same rank as ``Latest.rank``); rows in key order against deadlocks.
_RECORD_LATEST = """
INSERT INTO connector_latest AS l (destination, subject, requested_at, action, request_id,
                                   applied_at)
SELECT %s, s, r, a, q, coalesce(%s::timestamptz, now())
FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::text[])
     WITH ORDINALITY AS t(s, r, a, q, n)
ORDER BY t.n
ON CONFLICT (destination, subject) DO UPDATE
SET requested_at = EXCLUDED.requested_at, action = EXCLUDED.action,
    request_id = EXCLUDED.request_id, applied_at = EXCLUDED.applied_at
WHERE (EXCLUDED.requested_at, EXCLUDED.action = 'OPT_OUT', EXCLUDED.request_id)
      > (l.requested_at, l.action = 'OPT_OUT', l.request_id)
"""


# ``record`` with both: the newest-applied upsert as a data-modifying CTE of the outcomes'
# statement (executed once, whether or not the query reads it; the tables differ): one
# statement instead of two (issue #15).
_RECORD_BOTH = "WITH latest AS (" + _RECORD_LATEST.strip() + "),\n" + _RECORD.strip().removeprefix("WITH ")


def lock_key(destination: str, subject: str) -> int:
    """Pure: the advisory-lock key of one person at one destination."""
    return advisory_key(destination, subject)


def _clipped(outcome: StoredOutcome) -> StoredOutcome:
    """``outcome`` as the store keeps it (its detail clipped)."""
    detail = clip_detail(outcome.detail)
    return outcome if detail == outcome.detail else replace(outcome, detail=detail)


def _row(row: tuple[Any, ...]) -> StoredOutcome:
    return StoredOutcome(row[0], row[1], AckStatus(row[2]), row[3], row[4])


Params = tuple[Any, ...]


class DedupeStore:
    """Outcomes of one destination's commands, in PostgreSQL.

    Round trips per batch (issue #15: each costs both processes a wake-up): inside
    ``serialized``, BEGIN, the people's locks and ``read`` (the lookup and ``latest``, one
    statement) in one pipeline; ``record`` (one statement) and the COMMIT in another: two in
    all (nine at first: the lookup, BEGIN, locks and ``latest`` one by one, and a savepoint
    around ``record``'s two statements; three while the lookup came before the block)."""

    def __init__(self, dsn: str, destination: str, prepared_statements: bool = True) -> None:
        self.dsn = dsn
        self.destination = destination
        self._db = LazyConnection(dsn, autocommit=True, prepared_statements=prepared_statements)
        self._pending_locks: list[int] | None = None  # serialized: taken with the first statement
        self._open = False  # serialized: our BEGIN was sent and no COMMIT/ROLLBACK yet
        self._in_block = False

    @contextmanager
    def serialized(self, subjects: Sequence[str]) -> Iterator[None]:
        """Hold a per-person lock for ``subjects`` at this destination until the block ends:
        another instance of this destination's connector with a command for one of them
        waits, so "read the newest applied, apply, record" is never interleaved for one
        person. Transaction-level advisory locks on this store's connection (``latest`` and
        ``record`` inside the block run in the same transaction), so PgBouncer's transaction
        pooling keeps them; a crash releases them.

        The transaction begins, and the locks are taken, with the block's first statement
        (same pipeline, one round trip); ``record`` ends the block's transaction: its
        statements and the COMMIT go in one round trip, and nothing may run in the block after
        it. A block that raises rolls back."""
        if not subjects:
            yield
            return
        if self._in_block:
            raise RuntimeError("DedupeStore.serialized blocks do not nest")
        self._pending_locks = advisory_keys(self.destination, subjects)
        self._in_block = True
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        else:
            if self._open:  # record() was not called: commit what the block read
                self._db.run(lambda conn: conn.execute("COMMIT"))
        finally:
            self._pending_locks = None
            self._open = False
            self._in_block = False

    def _rollback(self) -> None:
        if not self._open:
            return
        self._open = False
        with suppress(RetriableError, psycopg.Error):
            self._db.run(lambda conn: conn.execute("ROLLBACK"))

    def _pipelined(
        self, statements: Sequence[tuple[str, Params]], commit: bool = False
    ) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` in one round trip, preceded by the block's BEGIN and locks when
        they are pending (or by a BEGIN of their own when ``commit`` and outside a block),
        followed by COMMIT when ``commit``; each statement's rows."""
        if self._in_block and not self._open and self._pending_locks is None:
            raise RuntimeError("DedupeStore: nothing may run in a serialized block after record()")

        def work(conn: psycopg.Connection[Any]) -> list[list[tuple[Any, ...]]]:
            try:
                with conn.pipeline():
                    if self._pending_locks is not None:
                        conn.execute("BEGIN")
                        self._open = True
                        conn.execute(ADVISORY_XACT_LOCKS, (self._pending_locks,))
                        self._pending_locks = None
                    elif commit and not self._open:
                        conn.execute("BEGIN")
                    cursors = [conn.execute(query, params) for query, params in statements]
                    if commit:
                        conn.execute("COMMIT")
                        self._open = False
                return [c.fetchall() if c.description else [] for c in cursors]
            except psycopg.Error:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    self._open = False
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise

        return self._db.run(work)

    def lookup(self, command_ids: Sequence[str]) -> dict[str, StoredOutcome]:
        return self.read(command_ids, ())[0]

    def latest(self, subjects: Sequence[str]) -> dict[str, Latest]:
        """The newest request applied here for each of ``subjects`` (absent: none)."""
        return self.read((), subjects)[1]

    def read(
        self, command_ids: Sequence[str], subjects: Sequence[str]
    ) -> tuple[dict[str, StoredOutcome], dict[str, Latest]]:
        """``lookup`` and ``latest`` in one round trip (inside ``serialized``: with the block's
        BEGIN and locks, so both read after the locks are held)."""
        if command_ids and subjects:
            ids, keys = text_array(command_ids), text_array(subjects)
            rows = self._pipelined([(_READ, (ids, self.destination, keys, self.destination))])[0]
            known = {r[1]: _row(r[1:]) for r in rows if r[0] == "c"}
            latest = {r[1]: Latest(r[1], r[5], Action(r[3]), r[2]) for r in rows if r[0] == "l"}
            return known, latest
        if command_ids:
            rows = self._pipelined([(_LOOKUP, (text_array(command_ids), self.destination))])[0]
            return {r[0]: _row(r) for r in rows}, {}
        if subjects:
            rows = self._pipelined([(_LATEST, (text_array(subjects), self.destination))])[0]
            return {}, {r[0]: Latest(r[0], r[1], Action(r[2]), r[3]) for r in rows}
        return {}, {}

    def record(
        self, outcomes: Sequence[StoredOutcome], latest: Sequence[Latest] = ()
    ) -> dict[str, StoredOutcome]:
        """Store outcomes (first writer wins) and, in the same transaction, the newest request
        applied per person (newest wins), and commit (inside ``serialized``: the block's
        transaction); return what is stored for each id."""
        if not outcomes and not latest:
            return {}
        newest: dict[str, Latest] = {}
        for item in latest:
            if item.subject not in newest or item.rank > newest[item.subject].rank:
                newest[item.subject] = item
        ordered = [newest[k] for k in sorted(newest)]
        latest_params: Params = ()
        if ordered:
            latest_params = (
                self.destination,
                max(o.applied_at for o in outcomes) if outcomes else None,
                text_array([x.subject for x in ordered]),
                text_array([x.requested_at.isoformat() for x in ordered]),
                text_array([x.action.value for x in ordered]),
                text_array([x.request_id for x in ordered]),
            )
        kept = [_clipped(o) for o in outcomes]  # as the store keeps them
        outcome_params: Params = ()
        if kept:
            outcome_params = (
                text_array([o.command_id for o in kept]),
                text_array([o.request_id for o in kept]),
                text_array([o.status.value for o in kept]),
                text_array([o.detail for o in kept]),
                text_array([o.applied_at.isoformat() for o in kept]),
                self.destination,
            )
        if ordered and kept:
            statement = (_RECORD_BOTH, latest_params + outcome_params)
        else:
            statement = (_RECORD_LATEST, latest_params) if ordered else (_RECORD, outcome_params)
        rows = self._pipelined([statement], commit=True)[-1]
        if not kept:
            return {}
        stored = {o.command_id: o for o in kept}
        stored.update((r[0], _row(r)) for r in rows)  # another writer's outcome won
        return stored

    def close(self) -> None:
        self._db.close()
