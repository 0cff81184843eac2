"""Data minimisation: once a request has been confirmed for longer than the retention
period, its raw contact details (email, phone, postal address, and those the customer
directory added: ``directory_identifiers``) and its device id (pseudonymous, but treated like
contact data) are removed. What is
needed to keep suppressing the person and to prove compliance stays: the SHA-256
hashes of the normalized identifiers, the customer id, scopes, source, jurisdiction,
every timestamp and each destination's outcome.

A request that needed attention (a destination refused it) and that someone resolved
(``optout resolve``) is treated the same way, the retention period counting from
``resolved_at``. Requests not yet confirmed nor resolved keep their details: connectors and
the sweeper still need them (``optout overdue`` and a gauge show those that need attention
for longer than the retention period).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from services.common.logging import get_logger

log = get_logger(__name__)

# Done long enough ago: confirmed, or resolved by a person.
_DUE = """
    pii_purged_at IS NULL
    AND ((state = 'CONFIRMED' AND confirmed_at < %(cutoff)s) OR resolved_at < %(cutoff)s)
"""

_PURGE_CHUNK = f"""
WITH chosen AS (
    SELECT event_id FROM requests
    WHERE {_DUE}
    ORDER BY coalesce(confirmed_at, resolved_at)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), purged AS (
    UPDATE requests r
    SET email = NULL, phone = NULL, postal_address = NULL, directory_identifiers = NULL,
        device_id = NULL, pii_purged_at = %(now)s
    FROM chosen WHERE r.event_id = chosen.event_id
    RETURNING r.event_id
)
-- The audit trail (services/common/audit.py), in the same statement.
INSERT INTO audit_events (event_id, at, step, detail)
SELECT event_id, %(now)s, 'purged', 'contact details removed' FROM purged
"""

_COUNT = f"SELECT count(*) FROM requests WHERE {_DUE}"


def purge_contact_details(
    conn: psycopg.Connection[Any],
    now: datetime,
    retention: timedelta,
    chunk: int = 5_000,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Purge in chunks, one transaction each; return how many requests were purged
    (or, with ``dry_run``, would be)."""
    params = {"cutoff": now - retention, "now": now, "limit": chunk}
    if dry_run:
        row = conn.execute(_COUNT, params).fetchone()
        return int(row[0]) if row else 0
    total = 0
    while True:
        with conn.transaction():
            done = conn.execute(_PURGE_CHUNK, params).rowcount
        total += done
        if progress is not None and done:
            progress(total)
        if done < chunk:
            break
    log.info("contact details purged", requests=total, retention_days=retention.days)
    return total


def purge_gpc_signals(
    conn: psycopg.Connection[Any], now: datetime, retention: timedelta, dry_run: bool = False
) -> int:
    """The log of applied GPC signals (``gpc_signals``, services/web/gpclog.py) holds no raw
    identifier; it is proof that signals were honoured, kept for ``retention`` (24 months
    by default: CCPA regulations § 7101) and then deleted. Returns how many rows were
    deleted (or, with ``dry_run``, would be)."""
    cutoff = now - retention
    if dry_run:
        row = conn.execute("SELECT count(*) FROM gpc_signals WHERE seen_at < %s", (cutoff,)).fetchone()
        return int(row[0]) if row else 0
    with conn.transaction():
        deleted = conn.execute("DELETE FROM gpc_signals WHERE seen_at < %s", (cutoff,)).rowcount
    log.info("gpc signal log purged", rows=deleted, retention_days=retention.days)
    return deleted
