"""The pipeline's own state of the requests a link made, read from PostgreSQL.

An async connection pool keeps the event loop free. The database is needed only for
status: one-click and form submissions go to Kafka and keep working without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from services.common.db import AsyncPool
from services.common.logging import get_logger
from services.web.pages import RequestView

log = get_logger(__name__)

STATE_NAMES = {"PENDING": "pending", "CONFIRMED": "confirmed", "NEEDS_ATTENTION": "needs attention"}

QUERY = """
SELECT r.event_id, r.state, r.scopes, r.requested_at, r.due_at, r.confirmed_at,
       count(d.command_id) FILTER (WHERE d.status <> 'PENDING'), count(d.command_id),
       -- the audit trail (services/common/audit.py; index on (event_id, id)): steps and times
       (SELECT array_agg(a.step ORDER BY a.id) FROM audit_events a WHERE a.event_id = r.event_id),
       (SELECT array_agg(a.at ORDER BY a.id) FROM audit_events a WHERE a.event_id = r.event_id)
  FROM requests r LEFT JOIN destination_status d ON d.event_id = r.event_id
 WHERE r.event_id = ANY(%s) OR (r.event_id = ANY(%s) AND r.customer_id = %s)
 GROUP BY r.event_id
 ORDER BY r.requested_at DESC
"""


class StatusUnavailable(Exception):
    """The database did not answer; the page says so (503)."""


def to_view(row: Sequence[Any]) -> RequestView:
    event_id, state, scopes, requested_at, due_at, confirmed_at, done, total, steps, times = row
    return RequestView(
        event_id=event_id,
        state=STATE_NAMES.get(state, "pending"),
        scopes=tuple(scopes),
        requested_at=requested_at,
        due_at=due_at,
        confirmed_at=confirmed_at,
        destinations_done=int(done),
        destinations_total=int(total),
        history=tuple(zip(times or (), steps or (), strict=True)),
    )


class StatusReader(AsyncPool):
    def __init__(
        self, dsn: str, max_size: int = 4, timeout: float = 5.0, prepared_statements: bool = True
    ) -> None:
        super().__init__(
            dsn, "optout-web", max_size=max_size, timeout=timeout, prepared_statements=prepared_statements
        )

    async def requests(
        self, event_ids: Sequence[str], refs: Sequence[str] = (), customer_id: str | None = None
    ) -> list[RequestView]:
        """The requests among ``event_ids``, plus those among ``refs`` (references the
        page handed out, e.g. of a request with a typed address) of ``customer_id``."""
        by_reference = list(refs) if customer_id is not None else []
        try:
            async with self.pool.connection(self.timeout) as conn:
                cursor = await conn.execute(QUERY, (list(event_ids), by_reference, customer_id))
                rows = await cursor.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("status lookup failed", error=type(exc).__name__)
            raise StatusUnavailable(type(exc).__name__) from None
        return [to_view(row) for row in rows]
