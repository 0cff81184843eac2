"""The customer directory in PostgreSQL (migration 0008): sealed entries, looked up by
customer id or by the SHA-256 of any identifier.

A customer's normalized details are one sealed JSON value (AES-256-GCM under the current
key of ``OPTOUT_SUPPRESSION_KEYS``, ``services/common/sealing.py``); the associated data
names the customer id, so a value cannot be moved to another customer's row. The
``customer_directory_keys`` rows (kind, hash, customer id) are the index. Importing a
customer replaces everything stored for it (idempotent).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import psycopg

from services.common.sealing import KeyRing
from services.domain.enrichment import DirectoryEntry, LookupKey

FORMAT_VERSION = 1


def context(customer_id: str) -> bytes:
    """Associated data of a customer's sealed entry (the key id is appended by the primitive)."""
    return f"optout-directory/{FORMAT_VERSION}/{customer_id}/".encode()


def seal_entry(ring: KeyRing, entry: DirectoryEntry) -> str:
    return ring.seal(entry.to_json().encode("utf-8"), context(entry.customer_id))


def open_entry(ring: KeyRing, customer_id: str, sealed: str) -> DirectoryEntry:
    """The entry in a sealed value; ``SealError`` if it does not belong to this customer."""
    return DirectoryEntry.from_json(customer_id, ring.open(sealed, context(customer_id))[2])


_UPSERT = """
INSERT INTO customer_directory AS c (customer_id, sealed, identifiers, updated_at)
SELECT t.c, t.s, t.n, %s FROM unnest(%s::text[], %s::text[], %s::int4[]) AS t(c, s, n)
ORDER BY t.c
ON CONFLICT (customer_id) DO UPDATE
SET sealed = EXCLUDED.sealed, identifiers = EXCLUDED.identifiers, updated_at = EXCLUDED.updated_at
"""

_DROP_KEYS = "DELETE FROM customer_directory_keys WHERE customer_id = ANY(%s)"

_ADD_KEYS = """
INSERT INTO customer_directory_keys (kind, sha256, customer_id)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
ON CONFLICT DO NOTHING
"""

# One round trip for a whole batch of requests: by customer id, or by any identifier's hash.
# The matching customer ids are gathered first (an InitPlan), then fetched through the primary
# key; an OR of both conditions made PostgreSQL scan the whole table on every lookup.
_LOOKUP = """
SELECT c.customer_id, c.sealed FROM customer_directory c
WHERE c.customer_id = ANY(ARRAY(
    SELECT unnest(%(ids)s::text[])
    UNION
    SELECT k.customer_id FROM unnest(%(kinds)s::text[], %(hashes)s::text[]) AS q(kind, sha256)
    JOIN customer_directory_keys k ON k.kind = q.kind AND k.sha256 = q.sha256))
"""


def upsert_entries(
    conn: psycopg.Connection[Any], ring: KeyRing, entries: Sequence[DirectoryEntry], now: datetime
) -> None:
    """Store ``entries`` (distinct customers) in one transaction, each replacing what was
    stored for its customer."""
    if not entries:
        return
    ids = [e.customer_id for e in entries]
    kinds: list[str] = []
    hashes: list[str] = []
    owners: list[str] = []
    for entry in entries:
        for kind, digest in sorted(entry.lookup_keys()):
            kinds.append(kind)
            hashes.append(digest)
            owners.append(entry.customer_id)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_UPSERT, (now, ids, [seal_entry(ring, e) for e in entries], [e.size for e in entries]))
        cur.execute(_DROP_KEYS, (ids,))
        cur.execute(_ADD_KEYS, (kinds, hashes, owners))


def lookup_rows(
    conn: psycopg.Connection[Any], customer_ids: Collection[str], keys: Collection[LookupKey]
) -> list[tuple[str, str]]:
    """``(customer_id, sealed)`` of every customer named by one of ``customer_ids`` or
    holding one of ``keys``: one query."""
    if not customer_ids and not keys:
        return []
    ordered = sorted(keys)
    rows = conn.execute(
        _LOOKUP,
        {
            "ids": sorted(customer_ids),
            "kinds": [k for k, _ in ordered],
            "hashes": [h for _, h in ordered],
        },
    ).fetchall()
    return [(str(customer_id), str(sealed)) for customer_id, sealed in rows]


def lookup(
    conn: psycopg.Connection[Any], ring: KeyRing, customer_ids: Collection[str], keys: Collection[LookupKey]
) -> list[DirectoryEntry]:
    """The entries ``lookup_rows`` finds, opened (``SealError`` if one cannot be)."""
    return [open_entry(ring, c, sealed) for c, sealed in lookup_rows(conn, customer_ids, keys)]


def has_entries(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM customer_directory)").fetchone()
    return bool(row and row[0])


def counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(customers, identifiers) stored."""
    row = conn.execute("SELECT count(*), coalesce(sum(identifiers), 0) FROM customer_directory").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
