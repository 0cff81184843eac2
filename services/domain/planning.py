"""Which destinations a request touches, and the SuppressionCommand for each. Pure."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from services.common.clock import to_millis
from services.common.contract import CONCRETE_SCOPES, Destination, Destinations, Identifier, Scope
from services.common.errors import PoisonMessage
from services.common.records import SuppressionCommandRecord
from services.domain.validation import OptOutRequest

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


@dataclass(frozen=True)
class PlannedCommand:
    command_id: str
    destination: str
    record: SuppressionCommandRecord  # the body, ready to encode
    # The scopes the destination serves: intake sends the command only when the request takes
    # effect for one of them (services/domain/preferences.py).
    serves: frozenset[Scope] = frozenset(CONCRETE_SCOPES)


def _identifier_values(request: OptOutRequest) -> dict[Identifier, object]:
    return {
        Identifier.CUSTOMER_ID: request.customer_id,
        Identifier.EMAIL: request.email,
        Identifier.PHONE: request.phone,
        Identifier.POSTAL_ADDRESS: request.postal_address,
        Identifier.EMAIL_SHA256: request.email_sha256,
        Identifier.PHONE_SHA256: request.phone_sha256,
        Identifier.DEVICE_ID: request.device_id,
    }


def applicable_destinations(request: OptOutRequest, destinations: Destinations) -> list[Destination]:
    """Of ``destinations`` (the deployment's destinations file), those the scopes route to
    and that have an identifier they can use.

    ``ALL`` skips destinations the request has no identifier for, and scopes no destination
    serves; an explicitly requested scope that no destination serves, or whose destination
    lacks an identifier, is an error (the request is dead-lettered with the reason).
    """
    if Scope.ALL not in request.scopes:
        served = {s for d in destinations for s in d.scopes}
        unserved = sorted(s.value for s in request.scopes if s not in served)
        if unserved:
            raise PoisonMessage(
                "no_destination_for_scope",
                f"no destination serves {', '.join(unserved)} (see the destinations file)",
            )
    values = _identifier_values(request)
    chosen = []
    for dest in destinations.for_scopes(request.scopes):
        if any(values[i] for i in dest.requires_one_of):
            chosen.append(dest)
        elif Scope.ALL not in request.scopes:
            needs = " or ".join(sorted(i.value for i in dest.requires_one_of))
            raise PoisonMessage(
                "missing_identifier_for_scope", f"{dest.id} needs {needs}, which the request lacks"
            )
    if not chosen:
        raise PoisonMessage("missing_identifier_for_scope", "no destination can act on this request")
    return chosen


def plan_commands(
    request: OptOutRequest, issued_at: datetime, destinations: Destinations
) -> list[PlannedCommand]:
    return [command_for(request, dest, issued_at) for dest in applicable_destinations(request, destinations)]


def command_for(request: OptOutRequest, dest: Destination, issued_at: datetime) -> PlannedCommand:
    """The SuppressionCommand for one destination (also used by the confirmer's re-sends).
    Only the identifiers the destination takes are filled in."""
    cid = command_id(request.event_id, dest.id)
    has = dest.identifiers
    record = SuppressionCommandRecord(
        command_id=cid,
        request_id=request.event_id,
        destination=dest.id,
        customer_id=request.customer_id if Identifier.CUSTOMER_ID in has else None,
        email=request.email if Identifier.EMAIL in has else None,
        phone=request.phone if Identifier.PHONE in has else None,
        postal_address=request.postal_address if Identifier.POSTAL_ADDRESS in has else None,
        email_sha256=request.email_sha256 if Identifier.EMAIL_SHA256 in has else None,
        phone_sha256=request.phone_sha256 if Identifier.PHONE_SHA256 in has else None,
        scopes=[s.value for s in request.scopes],
        issued_at=to_millis(issued_at),
        deadline=to_millis(request.due_at),
        action=request.action.value,
        requested_at=to_millis(request.requested_at),
        device_id=request.device_id if Identifier.DEVICE_ID in has else None,
    )
    return PlannedCommand(cid, dest.id, record, frozenset(dest.scopes))
