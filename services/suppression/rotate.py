"""Re-encrypting the suppression list under the current key, without downtime.

Rotation: add the new key to ``OPTOUT_SUPPRESSION_KEYS`` everywhere, make it current
(``OPTOUT_SUPPRESSION_CURRENT_KID``) once every process has it, then run ``optout
suppression-list rotate``: it re-encrypts the entries sealed under any other key, a chunk
per short transaction, in key order. Intake keeps writing meanwhile: a chunk's rows are
locked (``FOR UPDATE``) while they are re-sealed, and both lock rows in key order, so
neither overwrites the other and they never deadlock. When it reports nothing left under
old keys, the old key can be removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from services.common.logging import get_logger
from services.common.sealing import KeyRing, SealError
from services.suppression.entries import context

log = get_logger(__name__)

_CHUNK = """
SELECT kind, sha256, sealed FROM suppression_list
WHERE (kind, sha256) > (%(kind)s, %(sha256)s) AND split_part(sealed, '.', 1) <> %(current)s
ORDER BY kind, sha256
LIMIT %(limit)s
FOR UPDATE
"""

_UPDATE = """
UPDATE suppression_list s SET sealed = t.v
FROM unnest(%b::text[], %b::text[], %b::text[]) AS t(k, h, v)
WHERE s.kind = t.k AND s.sha256 = t.h
"""

_BY_KID = """
SELECT split_part(sealed, '.', 1) AS kid, count(*) FROM suppression_list GROUP BY kid ORDER BY kid
"""


@dataclass
class Rotation:
    rotated: int = 0  # entries re-encrypted under the current key
    unreadable: int = 0  # entries that could not be decrypted (key missing, or tampered)
    remaining: dict[str, int] | None = None  # entries per key id not current, after the run


def entries_by_kid(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {str(kid): int(count) for kid, count in conn.execute(_BY_KID).fetchall()}


def rotate(
    conn: psycopg.Connection[Any],
    ring: KeyRing,
    chunk: int = 1000,
    progress: Callable[[Rotation], None] | None = None,
) -> Rotation:
    """Re-encrypt every entry not sealed under ``ring.current``; one transaction per chunk."""
    result = Rotation()
    position = ("", "")
    while True:
        with conn.transaction():
            rows = conn.execute(
                _CHUNK,
                {"kind": position[0], "sha256": position[1], "current": ring.current, "limit": chunk},
            ).fetchall()
            kinds: list[str] = []
            hashes: list[str] = []
            values: list[str] = []
            for kind, sha256, sealed in rows:
                try:
                    _, _, plaintext = ring.open(sealed, context(kind, sha256))
                except SealError as exc:
                    result.unreadable += 1
                    log.error("suppression entry unreadable", kind=kind, sha256=sha256, reason=exc.reason)
                    continue
                kinds.append(kind)
                hashes.append(sha256)
                values.append(ring.seal(plaintext, context(kind, sha256)))
            if kinds:
                with conn.cursor() as cur:
                    cur.execute(_UPDATE, (kinds, hashes, values))
        result.rotated += len(kinds)
        if rows:
            position = (rows[-1][0], rows[-1][1])
            if progress is not None:
                progress(result)
        if len(rows) < chunk:
            break
    with conn.transaction():
        result.remaining = {kid: n for kid, n in entries_by_kid(conn).items() if kid != ring.current}
    log.info(
        "suppression list rotated",
        current_kid=ring.current,
        rotated=result.rotated,
        unreadable=result.unreadable,
        remaining=sum(result.remaining.values()),
    )
    return result
