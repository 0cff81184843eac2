"""Which destinations a request touches, and the SuppressionCommand for each. Pure."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from services.common.clock import to_millis
from services.common.contract import CONCRETE_SCOPES, Action, Destination, Destinations, Identifier, Scope
from services.common.errors import PoisonMessage
from services.common.records import PostalAddressRecord, SuppressionCommandRecord
from services.domain.enrichment import all_emails, all_phones, all_postal_addresses
from services.domain.identity import sha256_hex
from services.domain.validation import OptOutRequest, postal_key

COMMAND_NAMESPACE = uuid.UUID("6f1d8a9e-3c5b-4e57-9b0e-2f6c1a7d4e80")


def command_id(event_id: str, destination_id: str) -> str:
    """Deterministic: the same (event, destination) always gives the same command id
    (a UUIDv5, RFC 4122 section 4.3, computed without the ``uuid`` module's overhead)."""
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + f"{event_id}\x1f{destination_id}".encode()).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_BYTES = COMMAND_NAMESPACE.bytes
# The same instants recur in a batch (its issue time; a request's deadline and request time
# in each of its commands): converted once each.
_millis = lru_cache(maxsize=4096)(to_millis)
# Enum values by a dictionary lookup (``Enum.value`` is a Python-level property), a request's
# scopes per combination (a few sorted combinations exist).
_ACTION_VALUE = {a: a.value for a in Action}


@lru_cache(maxsize=256)
def _scope_values(scopes: tuple[Scope, ...]) -> tuple[str, ...]:
    return tuple(s.value for s in scopes)


@dataclass(frozen=True)
class PlannedCommand:
    command_id: str
    destination: str
    record: SuppressionCommandRecord  # the body, ready to encode
    # The scopes the destination serves: intake sends the command only when the request takes
    # effect for one of them (services/domain/preferences.py).
    serves: frozenset[Scope] = frozenset(CONCRETE_SCOPES)


@dataclass(frozen=True)
class ContactSlot:
    """The contact identifiers one command carries (before the destination's filter)."""

    email: str | None = None
    phone: str | None = None
    postal_address: PostalAddressRecord | None = None


def contact_slots(request: OptOutRequest, dest: Destination) -> list[ContactSlot]:
    """One slot per command ``dest`` gets: the request's own identifiers (and, where it has
    none, the directory's first) in slot 0; each further email, phone or address the
    directory added (``services/domain/enrichment.py``) in slots 1.. (zipped: slot *i* takes
    the *i*-th of each kind the destination carries). A request without enrichment gets
    exactly one slot, so exactly today's command."""
    if request.enrichment is None:
        return [ContactSlot(request.email, request.phone, request.postal_address)]
    has = dest.identifiers
    emails = all_emails(request) if has & _EMAIL_KINDS else []
    phones = all_phones(request) if has & _PHONE_KINDS else []
    postals = all_postal_addresses(request) if Identifier.POSTAL_ADDRESS in has else []
    count = max(1, len(emails), len(phones), len(postals))
    return [
        ContactSlot(
            emails[i] if i < len(emails) else None,
            phones[i] if i < len(phones) else None,
            postals[i] if i < len(postals) else None,
        )
        for i in range(count)
    ]


_EMAIL_KINDS = frozenset({Identifier.EMAIL, Identifier.EMAIL_SHA256})
_PHONE_KINDS = frozenset({Identifier.PHONE, Identifier.PHONE_SHA256})


def _identifier_values(request: OptOutRequest, slot: ContactSlot | None = None) -> dict[Identifier, object]:
    if slot is None:
        emails, phones, postals = all_emails(request), all_phones(request), all_postal_addresses(request)
        slot = ContactSlot(
            emails[0] if emails else None,
            phones[0] if phones else None,
            postals[0] if postals else None,
        )
    return {
        Identifier.CUSTOMER_ID: request.customer_id,
        Identifier.EMAIL: slot.email,
        Identifier.PHONE: slot.phone,
        Identifier.POSTAL_ADDRESS: slot.postal_address,
        Identifier.EMAIL_SHA256: slot.email,
        Identifier.PHONE_SHA256: slot.phone,
        Identifier.DEVICE_ID: request.device_id,
    }


def applicable_destinations(request: OptOutRequest, destinations: Destinations) -> list[Destination]:
    """Of ``destinations`` (the deployment's destinations file), those the scopes route to
    and that have an identifier they can use.

    ``ALL`` skips destinations the request has no identifier for, and scopes no destination
    serves; an explicitly requested scope that no destination serves, or whose destination
    lacks an identifier, is an error (the request is dead-lettered with the reason).
    """
    routed, unserved = _routing(destinations, request.scopes)
    if unserved:
        raise PoisonMessage(
            "no_destination_for_scope",
            f"no destination serves {', '.join(unserved)} (see the destinations file)",
        )
    if request.enrichment is None:  # the usual case: one bit mask per request
        return _applicable_by_mask(request, routed, _needs(destinations, request.scopes))
    values = _identifier_values(request)
    return _chosen(request, routed, lambda _n, dest: any(values[i] for i in dest.requires_one_of))


def _chosen(
    request: OptOutRequest, routed: tuple[Destination, ...], acts: Callable[[int, Destination], bool]
) -> list[Destination]:
    """The destinations of ``routed`` that ``acts`` on the request (given each one's position
    and itself); one that cannot is an error unless the request is for ALL scopes, and so is
    none at all."""
    chosen = []
    for position, dest in enumerate(routed):
        if acts(position, dest):
            chosen.append(dest)
        elif Scope.ALL not in request.scopes:
            needs = " or ".join(sorted(i.value for i in dest.requires_one_of))
            raise PoisonMessage(
                "missing_identifier_for_scope", f"{dest.id} needs {needs}, which the request lacks"
            )
    if not chosen:
        raise PoisonMessage("missing_identifier_for_scope", "no destination can act on this request")
    return chosen


# A request's identifiers as bits (a hash travels with its value: the same bit).
_BIT = {
    Identifier.CUSTOMER_ID: 1,
    Identifier.EMAIL: 2,
    Identifier.EMAIL_SHA256: 2,
    Identifier.PHONE: 4,
    Identifier.PHONE_SHA256: 4,
    Identifier.POSTAL_ADDRESS: 8,
    Identifier.DEVICE_ID: 16,
}


def _applicable_by_mask(
    request: OptOutRequest, routed: tuple[Destination, ...], needs: tuple[int, ...]
) -> list[Destination]:
    """``applicable_destinations`` for a request without enrichment (the values
    ``_identifier_values`` gives are then the request's own): the same choice and errors,
    each destination's ``requires_one_of`` as a bit mask (``_needs``)."""
    present = (
        (1 if request.customer_id else 0)
        | (2 if request.email else 0)
        | (4 if request.phone else 0)
        | (8 if request.postal_address else 0)
        | (16 if request.device_id else 0)
    )
    return _chosen(request, routed, lambda position, _dest: bool(present & needs[position]))


@lru_cache(maxsize=256)
def _needs(destinations: Destinations, scopes: tuple[Scope, ...]) -> tuple[int, ...]:
    """The ``requires_one_of`` bit mask of each destination ``_routing`` gives."""
    routed, _ = _routing(destinations, scopes)
    return tuple(sum({_BIT[i] for i in dest.requires_one_of}) for dest in routed)


@lru_cache(maxsize=256)
def _routing(
    destinations: Destinations, scopes: tuple[Scope, ...]
) -> tuple[tuple[Destination, ...], tuple[str, ...]]:
    """The destinations ``scopes`` route to (``Destinations.for_scopes``) and, unless ``ALL``
    is asked for, the scopes no destination serves. A deployment's destinations are loaded
    once and a request's scopes are one of a few sorted combinations: computed once each
    (``Destinations`` hashes by identity)."""
    unserved: tuple[str, ...] = ()
    if Scope.ALL not in scopes:
        served = {s for d in destinations for s in d.scopes}
        unserved = tuple(sorted(s.value for s in scopes if s not in served))
    return tuple(destinations.for_scopes(scopes)), unserved


def plan_commands(
    request: OptOutRequest, issued_at: datetime, destinations: Destinations
) -> list[PlannedCommand]:
    return [
        command
        for dest in applicable_destinations(request, destinations)
        for command in commands_for(request, dest, issued_at)
    ]


def commands_for(request: OptOutRequest, dest: Destination, issued_at: datetime) -> list[PlannedCommand]:
    """Every command of ``request`` for ``dest`` (also used by the confirmer's re-sends):
    one per contact slot (``contact_slots``). Slot 0 is today's command, id
    ``command_id(event_id, destination)``; a further slot is sent only if it carries an
    identifier the destination acts on, under an id derived from the hashes it carries."""
    slots = contact_slots(request, dest)
    planned = [command_for(request, dest, issued_at, slots[0])]
    for slot in slots[1:]:
        values = _identifier_values(request, slot)
        contact = [i for i in dest.identifiers & _CONTACT_KINDS if values[i]]
        if not contact or not any(values[i] for i in dest.requires_one_of):
            continue
        planned.append(command_for(request, dest, issued_at, slot, _slot_tag(slot)))
    return planned


_CONTACT_KINDS = _EMAIL_KINDS | _PHONE_KINDS | {Identifier.POSTAL_ADDRESS}


def _slot_tag(slot: ContactSlot) -> str:
    """What tells a slot's command apart from the request's other commands: its hashes."""
    parts = []
    if slot.email:
        parts.append(f"email:{sha256_hex(slot.email)}")
    if slot.phone:
        parts.append(f"phone:{sha256_hex(slot.phone)}")
    if slot.postal_address is not None:
        parts.append(f"postal:{sha256_hex(postal_key(slot.postal_address) or '')}")
    return ",".join(parts)


def command_for(
    request: OptOutRequest,
    dest: Destination,
    issued_at: datetime,
    slot: ContactSlot | None = None,
    tag: str | None = None,
) -> PlannedCommand:
    """The SuppressionCommand for one destination and contact slot (default: the request's
    own identifiers). Only the identifiers the destination takes are filled in."""
    if slot is None:
        slot = ContactSlot(request.email, request.phone, request.postal_address)
    cid = command_id(request.event_id, dest.id if tag is None else f"{dest.id}\x1f{tag}")
    has = dest.identifiers
    record = SuppressionCommandRecord(
        command_id=cid,
        request_id=request.event_id,
        destination=dest.id,
        customer_id=request.customer_id if Identifier.CUSTOMER_ID in has else None,
        email=slot.email if Identifier.EMAIL in has else None,
        phone=slot.phone if Identifier.PHONE in has else None,
        postal_address=slot.postal_address if Identifier.POSTAL_ADDRESS in has else None,
        email_sha256=_hash(slot.email, request.email, request.email_sha256)
        if Identifier.EMAIL_SHA256 in has
        else None,
        phone_sha256=_hash(slot.phone, request.phone, request.phone_sha256)
        if Identifier.PHONE_SHA256 in has
        else None,
        scopes=list(_scope_values(request.scopes)),
        issued_at=_millis(issued_at),
        deadline=_millis(request.due_at),
        action=_ACTION_VALUE[request.action],
        requested_at=_millis(request.requested_at),
        device_id=request.device_id if Identifier.DEVICE_ID in has else None,
    )
    return PlannedCommand(cid, dest.id, record, frozenset(dest.scopes))


def _hash(value: str | None, own: str | None, own_sha256: str | None) -> str | None:
    """The SHA-256 of a slot's value (the request's own hash for its own value, so a
    request whose raw value was purged still re-sends its hash)."""
    if value == own:
        return own_sha256
    return sha256_hex(value) if value else None
