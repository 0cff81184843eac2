"""Publishing OptOutRequested events: the one path used by ``optout publish`` and the web
service. Validates with intake's own rules before sending, so a bad request is refused
at the door with the same reason intake would give."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.avro import Codec, default_codec
from services.common.clock import Clock, SystemClock
from services.common.kafka import DeliveryTracker, make_producer
from services.common.records import OptOutRequestedRecord
from services.common.renewable_producer import Producing
from services.common.settings import Settings
from services.domain.validation import OptOutRequest, validate_request

FIELDS = (
    "event_id",
    "customer_id",
    "email",
    "phone",
    "postal_address",
    "scopes",
    "source",
    "jurisdiction",
    "requested_at",
    "action",
    "device_id",
)


@dataclass(frozen=True)
class Prepared:
    key: str
    record: OptOutRequestedRecord
    request: OptOutRequest


def parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    text = str(value).strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"requested_at {value!r} has no time zone")
    return parsed


class RequestPublisher:
    def __init__(
        self,
        settings: Settings,
        producer: Producing | None = None,
        codec: Codec | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer or make_producer(settings)
        self.codec = codec or default_codec()
        self.clock = clock or SystemClock()

    def prepare(self, fields: Mapping[str, Any]) -> Prepared:
        """Fill defaults, validate like intake does; raise ``PoisonMessage`` or ``ValueError``."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        scopes = fields.get("scopes") or []
        if isinstance(scopes, str):
            scopes = [s.strip().upper() for s in scopes.split(",") if s.strip()]
        raw: dict[str, Any] = {
            "event_id": fields.get("event_id") or str(uuid.uuid4()),
            "customer_id": fields.get("customer_id"),
            "email": fields.get("email"),
            "phone": fields.get("phone"),
            "postal_address": fields.get("postal_address"),
            "scopes": [str(s).upper() for s in scopes],
            "source": str(fields.get("source") or "API").upper(),
            "jurisdiction": fields.get("jurisdiction"),
            "requested_at": parse_time(fields.get("requested_at") or self.clock.now()),
            "action": str(fields.get("action") or "OPT_OUT").upper(),
            "device_id": fields.get("device_id"),
        }
        try:
            request = validate_request(
                raw,
                self.clock.now(),
                timedelta(seconds=self.settings.clock_skew_seconds),
                self.settings.default_phone_region,
            )
        except ValueError as exc:  # unknown enum symbol
            raise ValueError(str(exc)) from None
        # Send the normalized identifiers, so every consumer sees one spelling.
        record = OptOutRequestedRecord(
            event_id=request.event_id,
            customer_id=request.customer_id,
            email=request.email,
            phone=request.phone,
            postal_address=request.postal_address,
            scopes=[s.value for s in request.scopes],
            source=request.source.value,
            jurisdiction=request.jurisdiction,
            requested_at=request.requested_at,
            action=request.action.value,
            device_id=request.device_id,
        )
        self.codec.encode("OptOutRequested", record)  # fail here, not in the producer
        return Prepared(request.subject_key, record, request)

    def publish(self, prepared: Iterable[Prepared], timeout: float = 30.0) -> int:
        """Produce and wait for every delivery report; raise ``RetriableError`` if any failed."""
        tracker = DeliveryTracker(self.producer)
        count = 0
        for item in prepared:
            tracker.produce(
                self.settings.requests_topic,
                value=self.codec.encode("OptOutRequested", item.record),
                key=item.key,
            )
            count += 1
        tracker.wait(timeout)
        return count
