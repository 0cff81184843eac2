"""Intake's identity enrichment: each chunk of requests is looked up in the customer
directory (``services/directory``) in one query, before planning, and every request gets
the matched customer's other emails, phones and postal addresses
(``services/domain/enrichment.py``). What was added is recorded with the request
(``enrichment_columns``, in the statement that records it).

Cheap when unused: while the directory is empty (or ``OPTOUT_DIRECTORY_ENABLED=false``) no
query is made; emptiness is checked again at most every ``OPTOUT_DIRECTORY_CHECK_SECONDS``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
from prometheus_client import Counter

from services.common import metrics
from services.common.db import LazyConnection
from services.common.logging import get_logger
from services.common.sealing import KeyRing, SealError
from services.common.settings import Settings
from services.directory.store import has_entries, lookup_rows, open_entry
from services.domain.enrichment import (
    DirectoryEntry,
    DirectoryIndex,
    LookupKey,
    enrich,
    enrichable,
    identifier_sources,
    request_keys,
)
from services.domain.validation import OptOutRequest

log = get_logger(__name__)
SERVICE = "intake"

ENRICHED = Counter(
    "optout_intake_enriched_requests",
    "Requests to which the customer directory added emails, phones or postal addresses.",
)
UNREADABLE = Counter(
    "optout_directory_unreadable_entries",
    "Customer directory entries intake could not decrypt (a key missing from "
    "OPTOUT_SUPPRESSION_KEYS?); those customers are not enriched.",
)


class Directory(Protocol):
    def enrich(self, requests: Sequence[OptOutRequest]) -> list[OptOutRequest]: ...

    def close(self) -> None: ...


class NoDirectory:
    """Enrichment turned off: requests go through unchanged."""

    def enrich(self, requests: Sequence[OptOutRequest]) -> list[OptOutRequest]:
        return list(requests)

    def close(self) -> None:
        return None


class DatabaseDirectory:
    """The directory in PostgreSQL, read over intake's own connection (autocommit)."""

    def __init__(
        self, settings: Settings, ring: KeyRing, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = LazyConnection(
            settings.dsn(), autocommit=True, prepared_statements=settings.database_prepared_statements
        )
        self._ring = ring
        self._every = settings.directory_check_seconds
        self._monotonic = monotonic
        self._empty_until = 0.0  # while the directory is known to be empty, skip lookups
        self._checked_at = -float("inf")

    def close(self) -> None:
        self._db.close()

    def enrich(self, requests: Sequence[OptOutRequest]) -> list[OptOutRequest]:
        now = self._monotonic()
        if not requests or now < self._empty_until:
            return list(requests)
        wanted = [r for r in requests if enrichable(r)]
        if not wanted:
            return list(requests)
        ids = {r.customer_id for r in wanted if r.customer_id}
        keys: set[LookupKey] = set().union(*(request_keys(r) for r in wanted))
        started = time.monotonic()
        entries = self._db.run(lambda conn: self._lookup(conn, ids, keys))
        metrics.DB_SECONDS.labels(SERVICE, "directory_lookup").observe(time.monotonic() - started)
        if not entries:
            if now - self._checked_at >= self._every:
                self._checked_at = now
                if not self._db.run(has_entries):
                    self._empty_until = now + self._every
            return list(requests)
        index = DirectoryIndex(entries)
        enriched = [enrich(r, index) for r in requests]
        ENRICHED.inc(sum(1 for r in enriched if r.enrichment))
        return enriched

    def _lookup(
        self, conn: psycopg.Connection[Any], ids: set[str], keys: set[LookupKey]
    ) -> list[DirectoryEntry]:
        entries = []
        for customer_id, sealed in lookup_rows(conn, ids, keys):
            try:
                entries.append(open_entry(self._ring, customer_id, sealed))
            except SealError as exc:  # that customer is not enriched; the others are
                UNREADABLE.inc()
                log.error("customer directory entry cannot be decrypted", reason=exc.reason)
        return entries


def directory_for(settings: Settings, ring: KeyRing) -> Directory:
    return DatabaseDirectory(settings, ring) if settings.directory_enabled else NoDirectory()


def enrichment_columns(requests: Sequence[OptOutRequest]) -> tuple[list[str | None], list[str | None]]:
    """The ``requests.directory_identifiers`` and ``identifier_sources`` values (JSON text, or
    NULL when the directory added nothing) intake records with each request: the raw
    identifiers added (purged later) and where each identifier came from (hashes only)."""
    added: list[str | None] = []
    sources: list[str | None] = []
    for r in requests:
        if r.enrichment:
            added.append(r.enrichment.to_json())
            sources.append(json.dumps(identifier_sources(r), separators=(",", ":")))
        else:
            added.append(None)
            sources.append(None)
    return added, sources
