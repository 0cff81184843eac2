"""Identity enrichment: a request's identifiers merged with the customer directory's. Pure.

The customer directory (``optout customers import``, ``services/directory``) knows each
customer's emails, phones and postal addresses. Intake looks up every request of a batch
by its customer id and by the SHA-256 of each of its identifiers, then ``enrich`` adds the
matched customers' other identifiers to the request, so that "unsubscribe from ALL" reaches
the mail house with the address on file and the email providers with every address.
Opt-ins are not enriched (``enrichable``).

Matching: a request whose customer id is in the directory takes that customer only (the
business's own id is the strongest link); otherwise every customer holding one of the
request's email, phone or postal address (by hash). Identifiers the request already carries
are not repeated; added ones are ordered by kind, then hash, so the same directory always
gives the same commands (and command ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from services.common.contract import Action
from services.common.records import PostalAddressRecord, postal_address_record
from services.domain.identity import sha256_hex
from services.domain.validation import OptOutRequest, postal_key

EMAIL = "email"
PHONE = "phone"
POSTAL = "postal"
KINDS = (EMAIL, PHONE, POSTAL)  # the suppression list's kinds, with the same hashes
SOURCE_REQUEST = "request"
SOURCE_DIRECTORY = "directory"

LookupKey = tuple[str, str]  # (kind, sha256 hex)


def postal_hash(address: Mapping[str, Any]) -> str:
    """SHA-256 of the normalized address key (as the suppression list's postal hash)."""
    return sha256_hex(postal_key(address) or "")


@dataclass(frozen=True)
class DirectoryEntry:
    """One customer of the directory, normalized, in the clear (only in memory)."""

    customer_id: str
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    postal_addresses: tuple[PostalAddressRecord, ...] = ()

    def lookup_keys(self) -> set[LookupKey]:
        return (
            {(EMAIL, sha256_hex(e)) for e in self.emails}
            | {(PHONE, sha256_hex(p)) for p in self.phones}
            | {(POSTAL, postal_hash(a)) for a in self.postal_addresses}
        )

    @property
    def size(self) -> int:
        return len(self.emails) + len(self.phones) + len(self.postal_addresses)

    def to_json(self) -> str:
        return json.dumps(
            {
                "emails": list(self.emails),
                "phones": list(self.phones),
                "postal_addresses": list(self.postal_addresses),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, customer_id: str, text: str | bytes) -> DirectoryEntry:
        value = json.loads(text)
        return cls(
            customer_id,
            tuple(value.get("emails") or ()),
            tuple(value.get("phones") or ()),
            tuple(a for a in (postal_address_record(x) for x in value.get("postal_addresses") or ()) if a),
        )


@dataclass(frozen=True)
class Enrichment:
    """What the directory added to one request (values the request did not carry)."""

    customer_ids: tuple[str, ...] = ()  # the directory customers it matched
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    postal_addresses: tuple[PostalAddressRecord, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.emails or self.phones or self.postal_addresses)

    def to_json(self) -> str:
        """The ``requests.directory_identifiers`` column (raw values; purged)."""
        return json.dumps(
            {
                "customer_ids": list(self.customer_ids),
                "emails": list(self.emails),
                "phones": list(self.phones),
                "postal_addresses": list(self.postal_addresses),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_stored(cls, value: Mapping[str, Any] | None) -> Enrichment | None:
        """Back from the column (``None``: nothing was added, or it was purged)."""
        if not value:
            return None
        return cls(
            tuple(value.get("customer_ids") or ()),
            tuple(value.get("emails") or ()),
            tuple(value.get("phones") or ()),
            tuple(a for a in (postal_address_record(x) for x in value.get("postal_addresses") or ()) if a),
        )


def request_keys(request: OptOutRequest) -> set[LookupKey]:
    """The hashes a request can be found by in the directory (besides its customer id)."""
    keys: set[LookupKey] = set()
    if request.email_sha256:
        keys.add((EMAIL, request.email_sha256))
    if request.phone_sha256:
        keys.add((PHONE, request.phone_sha256))
    if request.postal_address is not None:
        keys.add((POSTAL, postal_hash(request.postal_address)))
    return keys


class DirectoryIndex:
    """The entries found for a batch, by customer id and by identifier hash."""

    def __init__(self, entries: Iterable[DirectoryEntry]) -> None:
        self.by_id: dict[str, DirectoryEntry] = {}
        self.by_key: dict[LookupKey, list[DirectoryEntry]] = {}
        for entry in entries:
            self.by_id[entry.customer_id] = entry
            for key in entry.lookup_keys():
                self.by_key.setdefault(key, []).append(entry)

    def __len__(self) -> int:
        return len(self.by_id)

    def matching(self, request: OptOutRequest) -> list[DirectoryEntry]:
        """The entries that belong to ``request`` (see the module docstring)."""
        if request.customer_id:
            own = self.by_id.get(request.customer_id)
            if own is not None:
                return [own]
        found = {e.customer_id: e for key in request_keys(request) for e in self.by_key.get(key, ())}
        return [found[c] for c in sorted(found)]


def merge(request: OptOutRequest, matched: Iterable[DirectoryEntry]) -> Enrichment:
    """The identifiers of ``matched`` that ``request`` does not carry yet, in a fixed order."""
    matched = list(matched)
    emails = {e for m in matched for e in m.emails} - {request.email}
    phones = {p for m in matched for p in m.phones} - {request.phone}
    own_postal = postal_hash(request.postal_address) if request.postal_address is not None else None
    postals: dict[str, PostalAddressRecord] = {}
    for m in matched:
        for address in m.postal_addresses:
            digest = postal_hash(address)
            if digest != own_postal:
                postals.setdefault(digest, address)
    return Enrichment(
        customer_ids=tuple(sorted({m.customer_id for m in matched})),
        emails=tuple(sorted(emails, key=sha256_hex)),
        phones=tuple(sorted(phones, key=sha256_hex)),
        postal_addresses=tuple(postals[h] for h in sorted(postals)),
    )


def enrichable(request: OptOutRequest) -> bool:
    """Only opt-outs are enriched: "all" means every channel of the person, but an opt-in
    (consent) stays as narrow as it was given (a START from one phone re-subscribes that
    phone, not the customer's emails)."""
    return request.action is Action.OPT_OUT


def enrich(request: OptOutRequest, index: DirectoryIndex) -> OptOutRequest:
    """``request`` with what the directory adds (unchanged when it adds nothing, and for an
    opt-in)."""
    if not enrichable(request):
        return request
    enrichment = merge(request, index.matching(request))
    return replace(request, enrichment=enrichment) if enrichment else request


def all_emails(request: OptOutRequest) -> list[str]:
    """Every email of a request: its own first, then the directory's."""
    added = request.enrichment.emails if request.enrichment else ()
    return [e for e in (request.email, *added) if e]


def all_phones(request: OptOutRequest) -> list[str]:
    added = request.enrichment.phones if request.enrichment else ()
    return [p for p in (request.phone, *added) if p]


def all_postal_addresses(request: OptOutRequest) -> list[PostalAddressRecord]:
    added = request.enrichment.postal_addresses if request.enrichment else ()
    own = [request.postal_address] if request.postal_address is not None else []
    return [*own, *added]


def identifier_sources(request: OptOutRequest) -> list[dict[str, str]]:
    """Where each identifier of an enriched request came from, without plaintext: kind, hash,
    source (``request`` or ``directory``) and, for the directory's, the customer(s) matched."""
    found: list[dict[str, str]] = []
    if request.customer_id:
        found.append({"kind": "customer_id", "source": SOURCE_REQUEST})
    for kind, digest in sorted(request_keys(request)):
        found.append({"kind": kind, "sha256": digest, "source": SOURCE_REQUEST})
    enrichment = request.enrichment
    if enrichment:
        customers = ",".join(enrichment.customer_ids)  # the customers matched
        added = (
            [(EMAIL, sha256_hex(e)) for e in enrichment.emails]
            + [(PHONE, sha256_hex(p)) for p in enrichment.phones]
            + [(POSTAL, postal_hash(a)) for a in enrichment.postal_addresses]
        )
        for kind, digest in added:
            found.append(
                {"kind": kind, "sha256": digest, "source": SOURCE_DIRECTORY, "customer_ids": customers}
            )
    return found
