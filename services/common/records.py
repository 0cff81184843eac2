"""Typed records of the four Avro messages of the contract (``schemas/*.avsc``).

These are the bodies the codec encodes and decodes, field for field. Timestamps
(``timestamp-millis``) may be written as epoch milliseconds or aware datetimes;
the codec always reads them back as aware UTC datetimes. The ``decode_*`` functions
check the writer schema's name (``PoisonMessage('wrong_message_type')`` otherwise) and
return the typed record; the reader schema guarantees every field is present.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict

from services.common.avro import Codec
from services.common.clock import from_millis

WireTime = int | datetime  # timestamp-millis: epoch ms when written, a datetime when read


def as_datetime(value: WireTime) -> datetime:
    """A ``timestamp-millis`` field as an aware datetime, however it was filled in."""
    return value if isinstance(value, datetime) else from_millis(value)


class PostalAddressRecord(TypedDict):
    name: str
    lines: list[str]
    city: str
    region: str | None
    postal_code: str
    country: str


class OptOutRequestedRecord(TypedDict):
    event_id: str
    customer_id: str | None
    email: str | None
    phone: str | None
    postal_address: PostalAddressRecord | None
    scopes: list[str]
    source: str
    jurisdiction: str | None
    requested_at: WireTime
    action: str  # version 2: OPT_OUT or OPT_IN
    device_id: str | None  # version 2


class SuppressionCommandRecord(TypedDict):
    command_id: str
    request_id: str
    destination: str
    customer_id: str | None
    email: str | None
    phone: str | None
    postal_address: PostalAddressRecord | None
    email_sha256: str | None
    phone_sha256: str | None
    scopes: list[str]
    issued_at: WireTime
    deadline: WireTime
    action: str  # version 2: OPT_OUT (suppress) or OPT_IN (un-suppress)
    requested_at: WireTime  # version 2; 0 in version-1 commands
    device_id: str | None  # version 2


class SuppressionAckRecord(TypedDict):
    command_id: str
    request_id: str
    destination: str
    status: str
    detail: str | None
    acked_at: WireTime


class DestinationOutcomeRecord(TypedDict):
    destination: str
    status: str
    applied_at: WireTime


class OptOutConfirmedRecord(TypedDict):
    request_id: str
    customer_id: str | None
    notify_email: str | None
    notify_postal_address: PostalAddressRecord | None
    destinations: list[DestinationOutcomeRecord]
    scopes: list[str]
    requested_at: WireTime
    confirmed_at: WireTime
    action: str  # version 2
    notify_phone: str | None  # version 2


def postal_address_record(raw: Mapping[str, Any] | None) -> PostalAddressRecord | None:
    if raw is None:
        return None
    return PostalAddressRecord(
        name=raw["name"],
        lines=list(raw["lines"]),
        city=raw["city"],
        region=raw.get("region"),
        postal_code=raw["postal_code"],
        country=raw["country"],
    )


def decode_opt_out_requested(codec: Codec, payload: bytes | None) -> OptOutRequestedRecord:
    _, r = codec.decode(payload, expect="OptOutRequested")
    return OptOutRequestedRecord(
        event_id=r["event_id"],
        customer_id=r["customer_id"],
        email=r["email"],
        phone=r["phone"],
        postal_address=postal_address_record(r["postal_address"]),
        scopes=r["scopes"],
        source=r["source"],
        jurisdiction=r["jurisdiction"],
        requested_at=r["requested_at"],
        action=r["action"],
        device_id=r["device_id"],
    )


def decode_suppression_command(codec: Codec, payload: bytes | None) -> SuppressionCommandRecord:
    _, r = codec.decode(payload, expect="SuppressionCommand")
    return SuppressionCommandRecord(
        command_id=r["command_id"],
        request_id=r["request_id"],
        destination=r["destination"],
        customer_id=r["customer_id"],
        email=r["email"],
        phone=r["phone"],
        postal_address=postal_address_record(r["postal_address"]),
        email_sha256=r["email_sha256"],
        phone_sha256=r["phone_sha256"],
        scopes=r["scopes"],
        issued_at=r["issued_at"],
        deadline=r["deadline"],
        action=r["action"],
        requested_at=r["requested_at"],
        device_id=r["device_id"],
    )


def decode_suppression_ack(codec: Codec, payload: bytes | None) -> SuppressionAckRecord:
    _, r = codec.decode(payload, expect="SuppressionAck")
    return SuppressionAckRecord(
        command_id=r["command_id"],
        request_id=r["request_id"],
        destination=r["destination"],
        status=r["status"],
        detail=r["detail"],
        acked_at=r["acked_at"],
    )


def decode_opt_out_confirmed(codec: Codec, payload: bytes | None) -> OptOutConfirmedRecord:
    _, r = codec.decode(payload, expect="OptOutConfirmed")
    return OptOutConfirmedRecord(
        request_id=r["request_id"],
        customer_id=r["customer_id"],
        notify_email=r["notify_email"],
        notify_postal_address=postal_address_record(r["notify_postal_address"]),
        destinations=[
            DestinationOutcomeRecord(
                destination=d["destination"], status=d["status"], applied_at=d["applied_at"]
            )
            for d in r["destinations"]
        ],
        scopes=r["scopes"],
        requested_at=r["requested_at"],
        confirmed_at=r["confirmed_at"],
        action=r["action"],
        notify_phone=r["notify_phone"],
    )
