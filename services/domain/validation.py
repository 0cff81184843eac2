"""Decode, validate and normalize one OptOutRequested. Pure: no broker, no database."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from services.common.avro import Codec
from services.common.contract import Action, Scope, Source
from services.common.errors import PoisonMessage
from services.common.records import PostalAddressRecord, decode_opt_out_requested
from services.domain.deadlines import deadline_of
from services.domain.identity import (
    check_text,
    normalize_email,
    normalize_phone,
    sha256_hex,
    subject_key,
)

if TYPE_CHECKING:
    from services.domain.enrichment import Enrichment

MAX_EVENT_ID = 200
MAX_ADDRESS_LINES = 6
MAX_DEVICE_ID = 128
_DEVICE_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


@dataclass(frozen=True)
class OptOutRequest:
    """A validated, normalized request, ready to record and fan out."""

    event_id: str
    customer_id: str | None
    email: str | None
    phone: str | None
    postal_address: PostalAddressRecord | None
    email_sha256: str | None
    phone_sha256: str | None
    scopes: tuple[Scope, ...]
    source: Source
    jurisdiction: str | None
    requested_at: datetime
    due_at: datetime
    deadline_rule: str
    subject_key: str
    content_sha256: str
    action: Action = Action.OPT_OUT
    device_id: str | None = None  # pseudonymous browser/device id (schema version 2)
    # What the customer directory added (intake, services/domain/enrichment.py); not part of
    # the request's content (content_sha256).
    enrichment: Enrichment | None = None

    # Derived once, when the request is made (intake asks for them several times per chunk).
    # SHA-256 of the normalized address key:
    postal_sha256: str | None = field(init=False, repr=False, compare=False)
    # Every subject (pseudonymous identifier) the request names, with those the customer
    # directory added to it, sorted (``services.domain.preferences.subjects_of``):
    subjects: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = postal_key(self.postal_address)
        postal = sha256_hex(key) if key is not None else None
        found: list[str] = []
        if self.customer_id:
            found.append(f"cust:{self.customer_id}")
        if self.email_sha256:
            found.append(f"email_sha256:{self.email_sha256}")
        if self.phone_sha256:
            found.append(f"phone_sha256:{self.phone_sha256}")
        if postal is not None:
            found.append(f"postal:{postal}")
        if self.device_id:
            found.append(f"device_sha256:{sha256_hex(self.device_id)}")
        added = self.enrichment  # what the customer directory added (opt-outs only)
        if added:
            found.extend(f"cust:{c}" for c in added.customer_ids)
            found.extend(f"email_sha256:{sha256_hex(e)}" for e in added.emails)
            found.extend(f"phone_sha256:{sha256_hex(p)}" for p in added.phones)
            found.extend(f"postal:{sha256_hex(k)}" for a in added.postal_addresses if (k := postal_key(a)))
        object.__setattr__(self, "postal_sha256", postal)
        object.__setattr__(self, "subjects", tuple(sorted(set(found))))


def _optional_text(record: Mapping[str, Any], field: str, max_length: int = 512) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    value = check_text(field, str(value), max_length).strip()
    return value or None


def normalize_postal_address(raw: Mapping[str, Any] | None) -> PostalAddressRecord | None:
    if raw is None:
        return None
    lines = [check_text("postal_address.lines", str(x), 200).strip() for x in raw.get("lines", [])]
    lines = [line for line in lines if line]
    if len(lines) > MAX_ADDRESS_LINES:
        raise PoisonMessage("invalid_postal_address", f"more than {MAX_ADDRESS_LINES} lines")
    country = check_text("postal_address.country", raw.get("country") or "", 60).strip().upper()
    region = raw.get("region")
    region = check_text("postal_address.region", region, 100).strip().upper() or None if region else None
    address = PostalAddressRecord(
        name=" ".join(check_text("postal_address.name", raw.get("name") or "", 300).split()),
        lines=[" ".join(line.split()) for line in lines],
        city=" ".join(check_text("postal_address.city", raw.get("city") or "", 200).split()),
        region=region,
        postal_code=check_text("postal_address.postal_code", raw.get("postal_code") or "", 20)
        .strip()
        .upper(),
        country=country,
    )
    if not address["lines"] or not address["city"] or not address["postal_code"]:
        raise PoisonMessage("invalid_postal_address", "lines, city and postal_code are required")
    if len(country) != 2 or not country.isalpha():
        raise PoisonMessage("invalid_postal_address", "country must be an ISO 3166-1 alpha-2 code")
    return address


def postal_key(address: Mapping[str, Any] | None) -> str | None:
    if address is None:
        return None
    return "|".join(
        [address["name"], *address["lines"], address["city"], address["postal_code"], address["country"]]
    ).lower()


def validate_request(
    record: Mapping[str, Any], now: datetime, clock_skew: timedelta, phone_region: str = "US"
) -> OptOutRequest:
    """Validate and normalize a decoded OptOutRequested; raise ``PoisonMessage`` with a reason."""
    event_id = check_text("event_id", str(record.get("event_id") or ""), MAX_EVENT_ID).strip()
    if not event_id:
        raise PoisonMessage("invalid_event_id", "event_id is empty")
    customer_id = _optional_text(record, "customer_id", 200)
    raw_email = _optional_text(record, "email", 320)
    raw_phone = _optional_text(record, "phone", 40)
    email = normalize_email(raw_email) if raw_email else None
    phone = normalize_phone(raw_phone, phone_region) if raw_phone else None
    address = normalize_postal_address(record.get("postal_address"))
    device_id = _device_id(record)
    if not (customer_id or email or phone or address or device_id):
        raise PoisonMessage(
            "no_identifier", "customer_id, email, phone, postal_address and device_id are empty"
        )
    action = _ACTIONS.get(record.get("action") or "") or Action(record.get("action") or Action.OPT_OUT)

    scopes = _scopes_of(tuple(record.get("scopes") or ()))
    if not scopes:
        raise PoisonMessage("empty_scopes", "scopes is empty")
    source = _SOURCES.get(record.get("source") or "") or Source(record.get("source") or Source.OTHER)
    jurisdiction = _optional_text(record, "jurisdiction", 20)
    jurisdiction = jurisdiction.upper() if jurisdiction else None

    requested_at = record.get("requested_at")
    if not isinstance(requested_at, datetime):
        raise PoisonMessage("invalid_requested_at", "requested_at is not a timestamp")
    if requested_at > now + clock_skew:
        raise PoisonMessage("requested_at_in_future", f"requested_at is more than {clock_skew} after now")

    rule, due = deadline_of(requested_at, scopes, jurisdiction)
    # The substance of the request, in a fixed order (the address dict is built above in a
    # fixed key order), so that the same content always hashes the same.
    # Version-1 content (an opt-out without a device id) hashes as it always did, so a
    # re-published old event is still recognised as the same request.
    substance: tuple[object, ...] = (
        customer_id,
        email,
        phone,
        address,
        tuple(s.value for s in scopes),
        jurisdiction,
    )
    if action is not Action.OPT_OUT or device_id:
        substance = (*substance, action.value, device_id)
    content = repr(substance)
    return OptOutRequest(
        event_id=event_id,
        customer_id=customer_id,
        email=email,
        phone=phone,
        postal_address=address,
        email_sha256=sha256_hex(email) if email else None,
        phone_sha256=sha256_hex(phone) if phone else None,
        scopes=scopes,
        source=source,
        jurisdiction=jurisdiction,
        requested_at=requested_at,
        due_at=due,
        deadline_rule=rule.name,
        subject_key=subject_key(customer_id, email, phone, postal_key(address), device_id),
        content_sha256=hashlib.sha256(content.encode("utf-8")).hexdigest(),
        action=action,
        device_id=device_id,
    )


_ACTIONS = {a.value: a for a in Action}
_SOURCES = {s.value: s for s in Source}


@lru_cache(maxsize=1024)
def _scopes_of(raw: tuple[Any, ...]) -> tuple[Scope, ...]:
    """The distinct scopes, sorted (few combinations exist: computed once each)."""
    return tuple(sorted({Scope(s) for s in raw}))


def _device_id(record: Mapping[str, Any]) -> str | None:
    value = _optional_text(record, "device_id", MAX_DEVICE_ID)
    if value is not None and not set(value) <= _DEVICE_ID_CHARACTERS:
        raise PoisonMessage("invalid_device_id", "device_id may hold only letters, digits and -_.:")
    return value


def decode_request(
    codec: Codec,
    payload: bytes | None,
    now: datetime,
    clock_skew: timedelta,
    phone_region: str = "US",
) -> OptOutRequest:
    return validate_request(decode_opt_out_requested(codec, payload), now, clock_skew, phone_region)
