"""Reading the suppression state (``suppression_state``) for the lookup API.

One statement per HTTP request: a primary-key read for one subject (``= %s``), or one
``= ANY(%s)`` for a batch (an index scan of the primary key per subject). An async pool
keeps the event loop free; statements are prepared on each connection after a few uses and
answered in binary (no text parsing of timestamps).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg
from psycopg_pool import PoolTimeout

from services.common.db import AsyncPool
from services.common.logging import get_logger
from services.domain.subjects import ScopeState

log = get_logger(__name__)

COLUMNS = "subject, scope, suppressed, since, event_id, action"
ONE = f"SELECT {COLUMNS} FROM suppression_state WHERE subject = %s"
MANY = f"SELECT {COLUMNS} FROM suppression_state WHERE subject = ANY(%s)"

Row = tuple[str, str, bool, datetime, str, str]


class StateUnavailable(Exception):
    """The database did not answer (the API answers 503)."""


def group(rows: Sequence[Row]) -> dict[str, list[ScopeState]]:
    """Rows ``(subject, scope, suppressed, since, event_id, action)`` grouped by subject."""
    found: dict[str, list[ScopeState]] = {}
    for subject, scope, suppressed, since, event_id, action in rows:
        found.setdefault(subject, []).append(ScopeState(scope, suppressed, since, event_id, action))
    return found


class StateReader(AsyncPool):
    """The suppression state of subjects, from PostgreSQL."""

    def __init__(
        self, dsn: str, max_size: int, timeout: float = 5.0, prepared_statements: bool = True
    ) -> None:
        super().__init__(
            dsn,
            "optout-lookup",
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            prepared_statements=prepared_statements,
        )

    async def states(self, subjects: Sequence[str]) -> dict[str, list[ScopeState]]:
        """The state rows of ``subjects`` grouped by subject (a subject with none: absent)."""
        if not subjects:
            return {}
        try:
            async with self.pool.connection(self.timeout) as conn:
                if len(subjects) == 1:
                    cursor = await conn.execute(ONE, (subjects[0],), binary=True)
                else:
                    cursor = await conn.execute(MANY, (list(subjects),), binary=True)
                rows: list[Row] = await cursor.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("suppression state read failed", error=type(exc).__name__)
            raise StateUnavailable(type(exc).__name__) from None
        return group(rows)
