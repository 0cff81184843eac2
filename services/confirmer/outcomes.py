"""What acknowledgements mean for a request. Pure: no broker, no database.

Precedence of a destination's outcome, so duplicate and out-of-order acks are harmless:

* ``PENDING`` takes any ack.
* ``APPLIED`` and ``ALREADY_SUPPRESSED`` are final: later acks of the same command change
  nothing (a late ``REJECTED`` from an earlier attempt never undoes a success).
* ``REJECTED`` gives way to ``APPLIED``/``ALREADY_SUPPRESSED`` (a re-sent command
  succeeded); a second ``REJECTED`` keeps the first one's detail.

A request is ``CONFIRMED`` when every applicable destination succeeded, needs attention
when any destination refused (and it is not confirmed), and is ``PENDING`` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from services.common.avro import Codec
from services.common.clock import to_millis
from services.common.contract import AckStatus, Action
from services.common.errors import PoisonMessage
from services.common.records import (
    DestinationOutcomeRecord,
    OptOutConfirmedRecord,
    PostalAddressRecord,
    SuppressionAckRecord,
    decode_suppression_ack,
    postal_address_record,
)
from services.domain.identity import check_text

PENDING = "PENDING"
MAX_DETAIL = 2000
SUCCESS = frozenset({AckStatus.APPLIED.value, AckStatus.ALREADY_SUPPRESSED.value})


class RequestState(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


@dataclass(frozen=True)
class Ack:
    """One decoded SuppressionAck."""

    command_id: str
    request_id: str
    destination: str
    status: AckStatus
    detail: str | None
    acked_at: datetime


@dataclass(frozen=True)
class DestinationRow:
    """One ``destination_status`` row: the recorded outcome of one command."""

    command_id: str
    event_id: str
    destination: str
    status: str  # PENDING or an AckStatus value
    detail: str | None
    acked_at: datetime | None


@dataclass(frozen=True)
class RequestRow:
    """The ``requests`` columns a confirmation needs."""

    event_id: str
    state: str
    customer_id: str | None
    email: str | None
    postal_address: PostalAddressRecord | None
    scopes: tuple[str, ...]
    requested_at: datetime
    action: str = Action.OPT_OUT.value  # OPT_OUT or OPT_IN (requests.action)
    phone: str | None = None  # E.164; the contact when there is no email


def _plain(value: object, limit: int) -> str | None:
    """``value`` when it is a str within ``limit`` characters without a NUL (what every ack
    our connectors write holds): the checks of ``check_text``, without its calls."""
    if type(value) is str and len(value) <= limit and "\x00" not in value:
        return value
    return None


_STATUSES = {s.value: s for s in AckStatus}


def ack_from_record(record: SuppressionAckRecord) -> Ack:
    """Turn a decoded SuppressionAck record into an ``Ack``; raise ``PoisonMessage``."""
    raw_detail = record.get("detail")
    command_id = _plain(record.get("command_id"), 200)
    request_id = _plain(record.get("request_id"), 200)
    destination = _plain(record.get("destination"), 200)
    detail = None if raw_detail is None else _plain(raw_detail, 100_000)
    if (
        command_id is None
        or request_id is None
        or destination is None
        or (detail is None and raw_detail is not None)
    ):
        try:  # the slow path: empty, not a str, too long or a NUL somewhere
            command_id = check_text("command_id", str(record.get("command_id") or ""), 200)
            request_id = check_text("request_id", str(record.get("request_id") or ""), 200)
            destination = check_text("destination", str(record.get("destination") or ""), 200)
            detail = None if raw_detail is None else check_text("detail", str(raw_detail), 100_000)
        except PoisonMessage as exc:
            raise PoisonMessage("invalid_ack", exc.detail) from None
    command_id, request_id, destination = command_id.strip(), request_id.strip(), destination.strip()
    if not command_id:
        raise PoisonMessage("invalid_ack", "command_id is empty")
    acked_at = record.get("acked_at")
    if not isinstance(acked_at, datetime):
        raise PoisonMessage("invalid_ack", "acked_at is not a timestamp")
    status = _STATUSES.get(str(record.get("status")))
    if status is None:
        raise PoisonMessage("invalid_ack", "unknown status")
    return Ack(
        command_id,
        request_id,
        destination,
        status,
        detail[:MAX_DETAIL] if detail is not None else None,
        acked_at,
    )


def decode_ack(codec: Codec, payload: bytes | None) -> Ack:
    return ack_from_record(decode_suppression_ack(codec, payload))


def mismatch(ack: Ack, row: DestinationRow) -> str | None:
    """Why an ack does not fit the command it names, or None when it does."""
    if ack.request_id != row.event_id:
        return "request_id differs from the command's request"
    if ack.destination != row.destination:
        return "destination differs from the command's destination"
    return None


def supersedes(current: str, incoming: AckStatus) -> bool:
    """Whether ``incoming`` replaces the recorded status ``current`` (see module docstring)."""
    if current == PENDING:
        return True
    if current in SUCCESS:
        return False
    # current is REJECTED: only a success replaces it.
    return incoming.value in SUCCESS


def apply_ack(row: DestinationRow, ack: Ack) -> DestinationRow:
    """The row after ``ack`` (the same row when the ack changes nothing)."""
    if not supersedes(row.status, ack.status):
        return row
    return DestinationRow(
        row.command_id, row.event_id, row.destination, ack.status.value, ack.detail, ack.acked_at
    )


def fold_acks(rows: Mapping[str, DestinationRow], acks: Iterable[Ack]) -> dict[str, DestinationRow]:
    """Apply ``acks`` in order to ``rows`` (by command id); return only the rows that changed.

    Acks for command ids not in ``rows`` are ignored (the caller dead-letters them)."""
    current = dict(rows)
    for ack in acks:
        row = current.get(ack.command_id)
        if row is not None:
            current[ack.command_id] = apply_ack(row, ack)
    # ``apply_ack`` returns the row itself when nothing changes: most rows are compared by identity.
    return {cid: row for cid, row in current.items() if row is not rows[cid] and row != rows[cid]}


def request_state(statuses: Iterable[str]) -> RequestState:
    """Completion rule: every destination succeeded -> CONFIRMED; any refused -> NEEDS_ATTENTION."""
    values = list(statuses)
    if values and all(s in SUCCESS for s in values):
        return RequestState.CONFIRMED
    if AckStatus.REJECTED.value in values:
        return RequestState.NEEDS_ATTENTION
    return RequestState.PENDING


def confirmation_record(
    request: RequestRow, destinations: Sequence[DestinationRow], confirmed_at: datetime
) -> OptOutConfirmedRecord:
    """The OptOutConfirmed body. Contact: the email, else the phone (``notify_phone``) and the
    postal address. It says what was done (``action``: opted out, or back in). No marketing
    content."""
    outcomes: list[DestinationOutcomeRecord] = []
    for d in _per_destination(destinations):
        if d.status not in SUCCESS or d.acked_at is None:
            raise ValueError(f"destination {d.destination} of {request.event_id} has not applied it")
        outcomes.append(
            DestinationOutcomeRecord(
                destination=d.destination, status=d.status, applied_at=to_millis(d.acked_at)
            )
        )
    if not outcomes:
        raise ValueError(f"request {request.event_id} has no destinations")
    return OptOutConfirmedRecord(
        request_id=request.event_id,
        customer_id=request.customer_id,
        notify_email=request.email,
        notify_postal_address=None if request.email else postal_address_record(request.postal_address),
        destinations=outcomes,
        scopes=list(request.scopes),
        requested_at=to_millis(request.requested_at),
        confirmed_at=to_millis(confirmed_at),
        action=request.action,
        notify_phone=None if request.email else request.phone,
    )


def _per_destination(rows: Sequence[DestinationRow]) -> list[DestinationRow]:
    """One row per destination, in name order. A request the customer directory enriched may
    send a destination several commands (one per email address, say): the destination
    counts as done when all are; its status is APPLIED if any command applied (else
    ALREADY_SUPPRESSED), its time the last acknowledgement."""
    by_destination: dict[str, list[DestinationRow]] = {}
    for row in rows:
        by_destination.setdefault(row.destination, []).append(row)
    merged = []
    for name in sorted(by_destination):
        group = by_destination[name]
        if len(group) == 1:
            merged.append(group[0])
            continue
        not_done = [r for r in group if r.status not in SUCCESS or r.acked_at is None]
        if not_done:
            merged.append(not_done[0])
            continue
        applied = any(r.status == AckStatus.APPLIED.value for r in group)
        status = AckStatus.APPLIED.value if applied else AckStatus.ALREADY_SUPPRESSED.value
        merged.append(replace(group[0], status=status, acked_at=max(r.acked_at for r in group if r.acked_at)))
    return merged
