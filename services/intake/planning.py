"""Which destinations a request touches, and the SuppressionCommand for each. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.clock import to_millis
from services.common.contract import Destination, Identifier, Scope, destinations_for_scopes
from services.common.errors import PoisonMessage
from services.intake.validation import OptOutRequest

COMMAND_NAMESPACE = uuid.UUID("6f1d8a9e-3c5b-4e57-9b0e-2f6c1a7d4e80")


def command_id(event_id: str, destination_id: str) -> str:
    """Deterministic: the same (event, destination) always gives the same command id."""
    return str(uuid.uuid5(COMMAND_NAMESPACE, f"{event_id}\x1f{destination_id}"))


@dataclass(frozen=True)
class PlannedCommand:
    command_id: str
    destination: str
    record: dict[str, Any]  # the SuppressionCommand body, ready to encode


def _identifier_values(request: OptOutRequest) -> dict[Identifier, Any]:
    return {
        Identifier.CUSTOMER_ID: request.customer_id,
        Identifier.EMAIL: request.email,
        Identifier.PHONE: request.phone,
        Identifier.POSTAL_ADDRESS: request.postal_address,
        Identifier.EMAIL_SHA256: request.email_sha256,
        Identifier.PHONE_SHA256: request.phone_sha256,
    }


def applicable_destinations(request: OptOutRequest) -> list[Destination]:
    """Destinations the scopes route to and that have an identifier they can use.

    ``ALL`` skips destinations the request has no identifier for; an explicitly
    requested scope that no destination can serve is an error.
    """
    values = _identifier_values(request)
    chosen = []
    for dest in destinations_for_scopes(request.scopes):
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


def plan_commands(request: OptOutRequest, issued_at: datetime) -> list[PlannedCommand]:
    return [command_for(request, dest, issued_at) for dest in applicable_destinations(request)]


def command_for(request: OptOutRequest, dest: Destination, issued_at: datetime) -> PlannedCommand:
    """The SuppressionCommand for one destination (also used by the confirmer's re-sends)."""
    values = _identifier_values(request)
    cid = command_id(request.event_id, dest.id)
    scopes = [s.value for s in request.scopes]
    record: dict[str, Any] = {
        "command_id": cid,
        "request_id": request.event_id,
        "destination": dest.id,
        "scopes": scopes,
        "issued_at": to_millis(issued_at),
        "deadline": to_millis(request.due_at),
    }
    for identifier in _ALL_IDENTIFIERS:
        record[identifier.value] = values[identifier] if identifier in dest.identifiers else None
    return PlannedCommand(cid, dest.id, record)


_ALL_IDENTIFIERS = tuple(Identifier)
