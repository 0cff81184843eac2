"""Recording a batch of requests in PostgreSQL: one transaction, a few round trips.

Rows go in with multi-row ``INSERT ... SELECT FROM unnest(...)`` statements;
``ON CONFLICT DO NOTHING`` makes a redelivered batch a no-op apart from the
re-send bookkeeping. The same statement adds the identifiers of every newly recorded
request to the encrypted suppression list (``services/suppression``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from services.common.sealing import KeyRing
from services.domain.planning import PlannedCommand
from services.domain.validation import OptOutRequest
from services.intake.enrich import enrichment_columns
from services.suppression.entries import Entry, entries_of, postal_sha256, seal


@dataclass
class ListedEntries:
    """A chunk's suppression-list entries as the statement's arrays: one row per (kind, hash),
    sorted by it; a person named by several requests of the chunk gets the latest value and
    request, the first request and the union of the scopes. ``events``/``rows``: which
    request makes which row (1-based) worth writing, if that request is new."""

    kinds: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    sealed: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    first: list[str] = field(default_factory=list)
    last: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, requests: Sequence[OptOutRequest], ring: KeyRing) -> ListedEntries:
        merged: dict[tuple[str, str], tuple[Entry, list[OptOutRequest]]] = {}
        for request in requests:
            for entry in entries_of(request):
                key = (entry.kind.value, entry.sha256)
                seen = merged.get(key)
                if seen is None:
                    merged[key] = (entry, [request])
                else:
                    merged[key] = (entry, [*seen[1], request])  # the latest value wins
        listed = cls()
        for row, key in enumerate(sorted(merged), start=1):
            entry, named_by = merged[key]
            listed.kinds.append(key[0])
            listed.hashes.append(key[1])
            listed.sealed.append(seal(ring, entry))
            listed.scopes.append(",".join(sorted({s.value for r in named_by for s in r.scopes})))
            listed.first.append(named_by[0].event_id)
            listed.last.append(named_by[-1].event_id)
            for request in named_by:
                listed.events.append(request.event_id)
                listed.rows.append(row)
        return listed


@dataclass
class RecordOutcome:
    new: set[str] = field(default_factory=set)  # event ids recorded now
    duplicates: set[str] = field(default_factory=set)  # seen before, same content
    conflicts: set[str] = field(default_factory=set)  # seen before, different content
    resend: set[str] = field(default_factory=set)  # command ids of duplicates still unacknowledged


# One statement records the new requests, their destination rows and their suppression-list
# entries: the first CTE inserts the requests (conflicting event ids are skipped), and only
# the commands and entries of requests inserted now are recorded. Entries come merged per
# (kind, hash) and sorted by it (see ``ListedEntries``); an entry is written when one of its
# requests is new (``m`` maps request ids to entry rows), in key order, so concurrent writers
# lock rows in one order and never deadlock, and merged with an existing entry: the latest
# value and request, the union of the scopes. Arrays go over the wire in binary (%b).
_RECORD = """
WITH new AS (
    INSERT INTO requests (event_id, content_sha256, subject_key, customer_id, email, phone,
                          postal_address, email_sha256, phone_sha256, postal_sha256, scopes,
                          source, jurisdiction, requested_at, received_at, due_at, deadline_rule,
                          directory_identifiers, identifier_sources)
    SELECT e, c, k, cu, em, ph, pa::jsonb, eh, phh, pah, string_to_array(sc, ','), so, ju, ra, %b,
           du, dr, di::jsonb, ds::jsonb
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                %b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[], %b::text[])
         AS t(e, c, k, cu, em, ph, pa, eh, phh, pah, sc, so, ju, ra, du, dr, di, ds)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), listed AS (
    INSERT INTO suppression_list AS s (kind, sha256, sealed, scopes, first_request_id,
                                       last_request_id, created_at, updated_at)
    SELECT t.k, t.h, t.v, string_to_array(t.sc, ','), t.f, t.l, %b, %b
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
         WITH ORDINALITY AS t(k, h, v, sc, f, l, n)
    WHERE t.n IN (SELECT m.n FROM unnest(%b::text[], %b::int8[]) AS m(e, n)
                  JOIN new ON new.event_id = m.e)
    ORDER BY t.n
    ON CONFLICT (kind, sha256) DO UPDATE
    SET sealed = EXCLUDED.sealed,
        scopes = CASE WHEN s.scopes @> EXCLUDED.scopes THEN s.scopes
                      ELSE ARRAY(SELECT DISTINCT x FROM unnest(s.scopes || EXCLUDED.scopes) AS x
                                 ORDER BY x) END,
        last_request_id = EXCLUDED.last_request_id,
        updated_at = EXCLUDED.updated_at
)
INSERT INTO destination_status (command_id, event_id, destination, first_issued_at,
                                last_issued_at)
SELECT t.c, t.e, t.d, %b, %b
FROM unnest(%b::text[], %b::text[], %b::text[]) AS t(c, e, d) JOIN new ON new.event_id = t.e
ON CONFLICT (command_id) DO NOTHING
RETURNING event_id
"""

_EXISTING = "SELECT event_id, content_sha256 FROM requests WHERE event_id = ANY(%s)"

_MARK_RESENT = """
UPDATE destination_status SET last_issued_at = %s, issue_count = issue_count + 1
WHERE event_id = ANY(%s) AND status = 'PENDING'
RETURNING command_id
"""


def record_batch(
    conn: psycopg.Connection[Any],
    requests: Sequence[OptOutRequest],
    commands: dict[str, list[PlannedCommand]],
    now: datetime,
    ring: KeyRing,
) -> RecordOutcome:
    """Record ``requests`` (unique event ids), their commands and their suppression-list
    entries (sealed with ``ring``'s current key) in one transaction."""
    outcome = RecordOutcome()
    if not requests:
        return outcome
    all_commands = [c for r in requests for c in commands.get(r.event_id, [])]
    # Sealed for every request of the chunk; the statement keeps those of new requests.
    listed = ListedEntries.of(requests, ring)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            _RECORD,
            (
                now,
                [r.event_id for r in requests],
                [r.content_sha256 for r in requests],
                [r.subject_key for r in requests],
                [r.customer_id for r in requests],
                [r.email for r in requests],
                [r.phone for r in requests],
                [json.dumps(r.postal_address) if r.postal_address else None for r in requests],
                [r.email_sha256 for r in requests],
                [r.phone_sha256 for r in requests],
                [postal_sha256(r.postal_address) for r in requests],
                [",".join(r.scopes) for r in requests],
                [r.source.value for r in requests],
                [r.jurisdiction for r in requests],
                [r.requested_at for r in requests],
                [r.due_at for r in requests],
                [r.deadline_rule for r in requests],
                *enrichment_columns(requests),
                now,
                now,
                listed.kinds,
                listed.hashes,
                listed.sealed,
                listed.scopes,
                listed.first,
                listed.last,
                listed.events,
                listed.rows,
                now,
                now,
                [c.command_id for c in all_commands],
                [c.record["request_id"] for c in all_commands],
                [c.destination for c in all_commands],
            ),
        )
        # Every request has at least one command (planning guarantees it), so the
        # destination rows returned name exactly the requests inserted now.
        outcome.new = {row[0] for row in cur.fetchall()}
        seen_before = [r for r in requests if r.event_id not in outcome.new]
        if seen_before:
            cur.execute(_EXISTING, ([r.event_id for r in seen_before],))
            stored = dict(cur.fetchall())
            for r in seen_before:
                if stored.get(r.event_id) == r.content_sha256:
                    outcome.duplicates.add(r.event_id)
                else:
                    outcome.conflicts.add(r.event_id)
        if outcome.duplicates:
            cur.execute(_MARK_RESENT, (now, list(outcome.duplicates)))
            outcome.resend = {row[0] for row in cur.fetchall()}
    return outcome
