"""Backfill: entries for requests recorded before the suppression list existed (migration
0005), from the contact details they still hold (requests already purged have none left).

Idempotent and safe while intake writes: an existing entry only gains the request's scopes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from services.common.errors import PoisonMessage
from services.common.logging import get_logger
from services.common.sealing import KeyRing
from services.domain.validation import normalize_postal_address
from services.suppression.entries import Entry, Kind, identifier_entries, seal

log = get_logger(__name__)

_CHUNK = """
SELECT event_id, email, phone, postal_address, scopes
FROM requests
WHERE event_id > %(after)s
  AND (email IS NOT NULL OR phone IS NOT NULL OR postal_address IS NOT NULL)
ORDER BY event_id
LIMIT %(limit)s
"""

# Grouped by key (one person may have several requests in a chunk), in key order.
_UPSERT = """
INSERT INTO suppression_list AS s (kind, sha256, sealed, scopes, first_request_id, last_request_id,
                                   created_at, updated_at)
SELECT t.k, t.h, (array_agg(t.v ORDER BY t.n DESC))[1],
       ARRAY(SELECT DISTINCT x FROM unnest(string_to_array(string_agg(t.sc, ','), ',')) AS x ORDER BY x),
       (array_agg(t.e ORDER BY t.n))[1], (array_agg(t.e ORDER BY t.n DESC))[1], %b, %b
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY
     AS t(k, h, v, e, sc, n)
GROUP BY t.k, t.h
ORDER BY t.k, t.h
ON CONFLICT (kind, sha256) DO UPDATE
SET scopes = ARRAY(SELECT DISTINCT x FROM unnest(s.scopes || EXCLUDED.scopes) AS x ORDER BY x)
"""

_POSTAL_HASHES = """
UPDATE requests r SET postal_sha256 = t.h
FROM unnest(%b::text[], %b::text[]) AS t(e, h)
WHERE r.event_id = t.e AND r.postal_sha256 IS NULL
"""


def _entries(row: tuple[Any, ...]) -> list[Entry]:
    _, email, phone, address, _ = row
    try:
        normalized = normalize_postal_address(address)
    except PoisonMessage:
        normalized = None  # recorded before today's validation: nothing to key it by
    return identifier_entries(email, phone, normalized)


def backfill(
    conn: psycopg.Connection[Any],
    ring: KeyRing,
    now: datetime,
    chunk: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Add the entries of every request still holding contact details; ``(requests, entries)``
    seen. One transaction per chunk."""
    after = ""
    requests = entries = 0
    while True:
        with conn.transaction():
            rows = conn.execute(_CHUNK, {"after": after, "limit": chunk}).fetchall()
            listed = [(row, e) for row in rows for e in _entries(row)]
            postal = [(str(row[0]), e.sha256) for row, e in listed if e.kind is Kind.POSTAL]
            with conn.cursor() as cur:
                if listed:
                    cur.execute(
                        _UPSERT,
                        (
                            now,
                            now,
                            [e.kind.value for _, e in listed],
                            [e.sha256 for _, e in listed],
                            [seal(ring, e) for _, e in listed],
                            [str(row[0]) for row, _ in listed],
                            [",".join(row[4]) for row, _ in listed],
                        ),
                    )
                if postal:
                    cur.execute(_POSTAL_HASHES, ([e for e, _ in postal], [h for _, h in postal]))
        requests += len(rows)
        entries += len(listed)
        if rows:
            after = str(rows[-1][0])
            if progress is not None:
                progress(requests, entries)
        if len(rows) < chunk:
            break
    log.info("suppression list backfilled", requests=requests, entries=entries)
    return requests, entries
