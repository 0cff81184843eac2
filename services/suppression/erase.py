"""Erasing a person: their suppression-list entries go, and the raw contact details of all
their requests are removed at once (not at the end of the retention period).

A person is named by an email, a phone, a customer id or a postal address. Their requests
are those carrying that identifier, and those sharing an email, phone or customer id with
these (one step). Their entries are the identifiers named and every email and phone on
their requests, including those the customer directory added to them. A postal address is
often a household's: its entry goes only when it was named, or when no request of anybody
else carries it, so that erasing one person never ends the suppression of another. The
contact details of their requests are removed; what stays is hashes, customer id, scopes,
timestamps and outcomes.

Used by ``optout erase`` (a deletion request); an opt-in that ends every suppression calls
the same function.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from services.common.audit import AuditEvent, Step, append
from services.common.logging import get_logger
from services.suppression.entries import Kind

log = get_logger(__name__)


@dataclass(frozen=True)
class Person:
    """Identifiers naming one person (hashes of normalized identifiers, customer ids)."""

    email_sha256: frozenset[str] = frozenset()
    phone_sha256: frozenset[str] = frozenset()
    postal_sha256: frozenset[str] = frozenset()
    customer_ids: frozenset[str] = frozenset()


@dataclass
class Erasure:
    entries_removed: int = 0  # suppression-list entries deleted
    requests_matched: int = 0  # requests of the person
    requests_cleared: int = 0  # of those, requests whose email/phone/postal address were removed now
    shared_addresses_kept: int = 0  # postal entries kept: other people's requests carry them
    open_requests: list[str] = field(default_factory=list)  # matched requests not yet confirmed


_MATCH = """
SELECT event_id, state, email_sha256, phone_sha256, postal_sha256, customer_id FROM requests
WHERE email_sha256 = ANY(%(email)s) OR phone_sha256 = ANY(%(phone)s)
   OR postal_sha256 = ANY(%(postal)s) OR customer_id = ANY(%(customer)s)
"""

_SHARED_ADDRESSES = """
SELECT DISTINCT postal_sha256 FROM requests
WHERE postal_sha256 = ANY(%(postal)s) AND NOT (event_id = ANY(%(events)s))
"""

# The identifiers the customer directory added to the person's requests (their hashes).
_ADDED = """
SELECT s->>'kind', s->>'sha256'
FROM requests r, jsonb_array_elements(r.identifier_sources) AS s
WHERE r.event_id = ANY(%(events)s) AND r.identifier_sources IS NOT NULL AND s->>'source' = 'directory'
"""

_DELETE = """
DELETE FROM suppression_list s USING unnest(%(kinds)s::text[], %(hashes)s::text[]) AS k(kind, h)
WHERE s.kind = k.kind AND s.sha256 = k.h
"""

_CLEAR = """
UPDATE requests
SET email = NULL, phone = NULL, postal_address = NULL, directory_identifiers = NULL,
    device_id = NULL,
    pii_purged_at = coalesce(pii_purged_at, %(now)s)
WHERE event_id = ANY(%(events)s)
  AND (email IS NOT NULL OR phone IS NOT NULL OR postal_address IS NOT NULL
       OR directory_identifiers IS NOT NULL OR device_id IS NOT NULL)
"""


def _present(values: Iterable[str | None]) -> set[str]:
    return {v for v in values if v}


def _match(
    conn: psycopg.Connection[Any], emails: set[str], phones: set[str], postals: set[str], customers: set[str]
) -> list[tuple[Any, ...]]:
    params = {
        "email": list(emails),
        "phone": list(phones),
        "postal": list(postals),
        "customer": list(customers),
    }
    return conn.execute(_MATCH, params).fetchall()


def erase_person(conn: psycopg.Connection[Any], person: Person, now: datetime) -> Erasure:
    """Remove the person's suppression-list entries and their requests' contact details, in
    one transaction."""
    result = Erasure()
    with conn.transaction():
        named = _match(
            conn,
            set(person.email_sha256),
            set(person.phone_sha256),
            set(person.postal_sha256),
            set(person.customer_ids),
        )
        emails = set(person.email_sha256) | _present(r[2] for r in named)
        phones = set(person.phone_sha256) | _present(r[3] for r in named)
        customers = set(person.customer_ids) | _present(r[5] for r in named)
        rows = _match(conn, emails, phones, set(person.postal_sha256), customers)
        events = sorted(str(r[0]) for r in rows)
        result.requests_matched = len(rows)
        result.open_requests = sorted(str(r[0]) for r in rows if r[1] != "CONFIRMED")
        emails |= _present(r[2] for r in rows)
        phones |= _present(r[3] for r in rows)
        added = conn.execute(_ADDED, {"events": events}).fetchall()
        emails |= {str(h) for k, h in added if k == Kind.EMAIL.value}
        phones |= {str(h) for k, h in added if k == Kind.PHONE.value}
        addresses = (
            _present(r[4] for r in rows) | {str(h) for k, h in added if k == Kind.POSTAL.value}
        ) - set(person.postal_sha256)
        shared = {
            str(r[0])
            for r in conn.execute(
                _SHARED_ADDRESSES, {"postal": sorted(addresses), "events": events}
            ).fetchall()
        }
        result.shared_addresses_kept = len(shared)
        postals = set(person.postal_sha256) | (addresses - shared)
        keys = [
            *((Kind.EMAIL.value, h) for h in sorted(emails)),
            *((Kind.PHONE.value, h) for h in sorted(phones)),
            *((Kind.POSTAL.value, h) for h in sorted(postals)),
        ]
        result.entries_removed = conn.execute(
            _DELETE, {"kinds": [k for k, _ in keys], "hashes": [h for _, h in keys]}
        ).rowcount
        result.requests_cleared = conn.execute(_CLEAR, {"now": now, "events": events}).rowcount
        append(
            conn,
            [
                AuditEvent(
                    e, now, Step.ERASED, detail=f"{result.entries_removed} suppression-list entries removed"
                )
                for e in events
            ],
        )
    log.info(
        "person erased",
        entries_removed=result.entries_removed,
        requests_matched=result.requests_matched,
        requests_cleared=result.requests_cleared,
        shared_addresses_kept=result.shared_addresses_kept,
        open_requests=len(result.open_requests),
    )
    return result
