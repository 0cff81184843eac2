"""Reading the suppression list in the clear: only for what must send an identifier to a
destination (replaying the list to a destination added later, reconciling with one).
Nothing else in the code decrypts it.

Reads go in chunks in key order (keyset pagination), so a whole-list replay holds neither
the list in memory nor a long transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from services.common.sealing import KeyRing
from services.suppression.entries import Kind, open_value


@dataclass(frozen=True)
class Suppressed:
    """One suppressed identifier, decrypted."""

    kind: Kind
    sha256: str
    identifier: str  # normalized email, E.164 phone, or the normalized address as JSON
    scopes: tuple[str, ...]
    last_request_id: str


_BY_HASH = """
SELECT kind, sha256, sealed, scopes, last_request_id FROM suppression_list
WHERE kind = %s AND sha256 = ANY(%s)
"""

_PAGE = """
SELECT kind, sha256, sealed, scopes, last_request_id FROM suppression_list
WHERE (kind, sha256) > (%(kind)s, %(sha256)s)
  AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s::text[]))
  AND (%(scopes)s::text[] IS NULL OR scopes && %(scopes)s::text[])
ORDER BY kind, sha256
LIMIT %(limit)s
"""


def _decrypt(ring: KeyRing, row: tuple[Any, ...]) -> Suppressed:
    kind, sha256, sealed, scopes, last_request_id = row
    return Suppressed(
        kind=Kind(kind),
        sha256=sha256,
        identifier=open_value(ring, kind, sha256, sealed),
        scopes=tuple(scopes),
        last_request_id=last_request_id,
    )


def identifiers_for(
    conn: psycopg.Connection[Any], ring: KeyRing, kind: Kind, hashes: Sequence[str]
) -> dict[str, Suppressed]:
    """The entries of ``kind`` with these hashes, by hash (hashes not listed are absent).
    ``SealError`` if a value cannot be decrypted (a retired key, or tampering)."""
    rows = conn.execute(_BY_HASH, (kind.value, list(hashes))).fetchall()
    return {row[1]: _decrypt(ring, row) for row in rows}


def iterate(
    conn: psycopg.Connection[Any],
    ring: KeyRing,
    kinds: Collection[Kind] | None = None,
    scopes: Collection[str] | None = None,
    chunk: int = 1000,
) -> Iterator[list[Suppressed]]:
    """Every entry (of ``kinds``, with any of ``scopes``), decrypted, ``chunk`` at a time in
    key order. Entries written meanwhile after the current position are included."""
    position = ("", "")
    params: dict[str, Any] = {
        "kinds": [k.value for k in kinds] if kinds is not None else None,
        "scopes": list(scopes) if scopes is not None else None,
        "limit": chunk,
    }
    while True:
        with conn.transaction():  # one short transaction per page (a savepoint inside the caller's)
            rows = conn.execute(_PAGE, {**params, "kind": position[0], "sha256": position[1]}).fetchall()
        if rows:
            yield [_decrypt(ring, row) for row in rows]
            position = (rows[-1][0], rows[-1][1])
        if len(rows) < chunk:
            return
