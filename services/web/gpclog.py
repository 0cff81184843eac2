"""The log of applied Global Privacy Control signals (table ``gpc_signals``, migration 0009).

Every time the web service applies a ``Sec-GPC: 1`` signal (a device's or a customer's) it
writes one row: when, whose (SHA-256 of ``device:<id>`` or ``customer:<id>``, never the id
itself), the request it became and a coarse browser family; never an IP address. With the
``requests`` table (the request's confirmation) it shows a regulator that the signal was
honoured (CCPA regulations § 7025; records kept 24 months, § 7101).

``optout gpc-log`` lists or exports it; ``optout purge`` deletes rows older than
``OPTOUT_GPC_LOG_RETENTION_DAYS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from services.common.db import AsyncPool


@dataclass(frozen=True)
class GpcSignal:
    seen_at: datetime
    subject_kind: str  # device | customer
    subject_sha256: str
    event_id: str
    published: bool
    user_agent_family: str
    jurisdiction: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "seen_at": self.seen_at.isoformat(),
            "subject_kind": self.subject_kind,
            "subject_sha256": self.subject_sha256,
            "event_id": self.event_id,
            "published": self.published,
            "jurisdiction": self.jurisdiction,
            "user_agent_family": self.user_agent_family,
        }


class SignalLogUnavailable(Exception):
    """The database did not take the row."""


INSERT = """
INSERT INTO gpc_signals (seen_at, subject_kind, subject_sha256, event_id, published,
                         jurisdiction, user_agent_family)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""


class SignalLog(AsyncPool):
    """Writes rows from the web app through its own small async pool."""

    def __init__(
        self, dsn: str, max_size: int = 2, timeout: float = 5.0, prepared_statements: bool = True
    ) -> None:
        super().__init__(
            dsn, "optout-web-gpc", max_size=max_size, timeout=timeout, prepared_statements=prepared_statements
        )

    async def record(self, signal: GpcSignal) -> None:
        try:
            async with self.pool.connection(self.timeout) as conn:
                await conn.execute(
                    INSERT,
                    (
                        signal.seen_at,
                        signal.subject_kind,
                        signal.subject_sha256,
                        signal.event_id,
                        signal.published,
                        signal.jurisdiction,
                        signal.user_agent_family,
                    ),
                )
        except (psycopg.Error, PoolTimeout) as exc:
            raise SignalLogUnavailable(type(exc).__name__) from None


SELECT = """
SELECT seen_at, subject_kind, subject_sha256, event_id, published, jurisdiction, user_agent_family
  FROM gpc_signals
 WHERE seen_at >= %s AND seen_at < %s AND (%s::text IS NULL OR subject_sha256 = %s)
 ORDER BY seen_at, id
"""


def list_signals(
    conn: psycopg.Connection[Any],
    since: datetime,
    until: datetime,
    subject_sha256: str | None = None,
) -> Iterator[GpcSignal]:
    """Signals seen in [since, until), oldest first (streamed: a server-side cursor)."""
    with conn.cursor(name="gpc_log") as cursor:
        cursor.execute(SELECT, (since, until, subject_sha256, subject_sha256))
        for row in cursor:
            seen_at, kind, digest, event_id, published, jurisdiction, family = row
            yield GpcSignal(seen_at, kind, digest, event_id, published, family, jurisdiction)
