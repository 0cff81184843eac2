"""The connectors' dedupe store: one row per (destination, command_id) with its outcome.

Pure part: ``first_of_each`` (which commands of a batch are distinct). I/O part:
``DedupeStore`` (PostgreSQL, table ``connector_applied``, migration 0003).

Ordering in ``ConnectorStep.submit`` and why:

1. look up the batch's command ids here;
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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import psycopg

from services.common.contract import AckStatus, Action
from services.common.db import ADVISORY_XACT_LOCKS, LazyConnection, advisory_key, advisory_keys, first_line
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


_LOOKUP = """
SELECT command_id, request_id, status, detail, applied_at FROM connector_applied
WHERE destination = %s AND command_id = ANY(%s)
"""

# DO UPDATE (a no-op) rather than DO NOTHING so RETURNING also yields the row that won
# when another instance recorded the same command first: every ack then agrees.
_RECORD = """
INSERT INTO connector_applied (destination, command_id, request_id, status, detail, applied_at)
SELECT %s, c, r, s, d, a FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],
                                     %s::timestamptz[]) AS t(c, r, s, d, a)
ON CONFLICT (destination, command_id) DO UPDATE SET destination = connector_applied.destination
RETURNING command_id, request_id, status, detail, applied_at
"""


_LATEST = """
SELECT subject, requested_at, action, request_id FROM connector_latest
WHERE destination = %s AND subject = ANY(%s)
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


def lock_key(destination: str, subject: str) -> int:
    """Pure: the advisory-lock key of one person at one destination."""
    return advisory_key(destination, subject)


def _row(row: tuple[Any, ...]) -> StoredOutcome:
    return StoredOutcome(row[0], row[1], AckStatus(row[2]), row[3], row[4])


class DedupeStore:
    """Outcomes of one destination's commands, in PostgreSQL."""

    def __init__(self, dsn: str, destination: str, prepared_statements: bool = True) -> None:
        self.dsn = dsn
        self.destination = destination
        self._db = LazyConnection(dsn, autocommit=True, prepared_statements=prepared_statements)

    @contextmanager
    def serialized(self, subjects: Sequence[str]) -> Iterator[None]:
        """Hold a per-person lock for ``subjects`` at this destination until the block ends:
        another instance of this destination's connector with a command for one of them
        waits, so "read the newest applied, apply, record" is never interleaved for one
        person. Transaction-level advisory locks on this store's connection (``latest`` and
        ``record`` inside the block run in the same transaction, committed when it ends),
        so PgBouncer's transaction pooling keeps them; a crash releases them."""
        if not subjects:
            yield
            return
        keys = advisory_keys(self.destination, subjects)
        try:
            conn = self._db.get()
            with conn.transaction():
                conn.execute(ADVISORY_XACT_LOCKS, (keys,))
                yield
        except psycopg.OperationalError as exc:
            self._db.close()
            raise RetriableError(f"database error: {first_line(exc)}") from exc

    def lookup(self, command_ids: Sequence[str]) -> dict[str, StoredOutcome]:
        if not command_ids:
            return {}
        rows = self._db.run(
            lambda conn: conn.execute(_LOOKUP, (self.destination, list(command_ids))).fetchall()
        )
        return {r[0]: _row(r) for r in rows}

    def latest(self, subjects: Sequence[str]) -> dict[str, Latest]:
        """The newest request applied here for each of ``subjects`` (absent: none)."""
        if not subjects:
            return {}
        rows = self._db.run(lambda conn: conn.execute(_LATEST, (self.destination, list(subjects))).fetchall())
        return {r[0]: Latest(r[0], r[1], Action(r[2]), r[3]) for r in rows}

    def record(
        self, outcomes: Sequence[StoredOutcome], latest: Sequence[Latest] = ()
    ) -> dict[str, StoredOutcome]:
        """Store outcomes (first writer wins) and, in the same transaction, the newest request
        applied per person (newest wins); return what is stored for each id."""
        if not outcomes and not latest:
            return {}
        newest: dict[str, Latest] = {}
        for item in latest:
            if item.subject not in newest or item.rank > newest[item.subject].rank:
                newest[item.subject] = item
        ordered = [newest[k] for k in sorted(newest)]
        params = (
            self.destination,
            [o.command_id for o in outcomes],
            [o.request_id for o in outcomes],
            [o.status.value for o in outcomes],
            [clip_detail(o.detail) for o in outcomes],
            [o.applied_at for o in outcomes],
        )

        def write(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            with conn.transaction():
                if ordered:
                    conn.execute(
                        _RECORD_LATEST,
                        (
                            self.destination,
                            max(o.applied_at for o in outcomes) if outcomes else None,
                            [x.subject for x in ordered],
                            [x.requested_at for x in ordered],
                            [x.action.value for x in ordered],
                            [x.request_id for x in ordered],
                        ),
                    )
                if not outcomes:
                    return []
                return conn.execute(_RECORD, params).fetchall()

        return {r[0]: _row(r) for r in self._db.run(write)}

    def close(self) -> None:
        self._db.close()
