"""What a replay sends: one SuppressionCommand per suppressed subject. Pure (no I/O).

A *subject* is a pseudonymous identifier of a person (``cust:``, ``email_sha256:``,
``phone_sha256:``, ``postal:``, ``device_sha256:``; services/domain/preferences.py). A replay
sends each subject suppressed for a scope the destination serves, with the one identifier the
subject stands for, in the form the destination takes: the raw email, phone or address
(decrypted from the suppression list by the caller) or the hash for hashes-only destinations.
A subject the destination cannot use (a device hash, or a raw value that is no longer in the
suppression list) is skipped and counted.

Replayed commands belong to no request: their ``request_id`` is ``replay:<replay id>``
(``REQUEST_PREFIX``), the confirmer records their acks in ``replay_commands`` and never
confirms anything for them. Their ``command_id`` is a UUIDv5 of (replay id, destination,
subject), so resuming a killed run re-sends the same ids and the connector applies each once.
``requested_at`` is the newest ``since`` of the subject's suppressed scopes, so a connector's
newest-wins rule still lets a newer opt-in at the destination win.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from services.common.clock import to_millis
from services.common.contract import REPLAY_REQUEST_PREFIX, Action, Destination, Identifier, is_replay_request
from services.common.records import PostalAddressRecord, SuppressionCommandRecord
from services.domain.planning import command_id

REQUEST_PREFIX = REPLAY_REQUEST_PREFIX


class SubjectKind(StrEnum):
    CUSTOMER = "cust"
    EMAIL = "email_sha256"
    PHONE = "phone_sha256"
    POSTAL = "postal"
    DEVICE = "device_sha256"


def split_subject(subject: str) -> tuple[str, str]:
    kind, _, value = subject.partition(":")
    return kind, value


def request_id_of(replay_id: str) -> str:
    return f"{REQUEST_PREFIX}{replay_id}"


def is_replay(request_id: str) -> bool:
    return is_replay_request(request_id)


def replay_command_id(replay_id: str, destination: str, subject: str) -> str:
    """Deterministic: the same (replay, destination, subject) always gives the same id."""
    return command_id(f"{REQUEST_PREFIX}{replay_id}", f"{destination}\x1f{subject}")


def sealed_kind(subject: str, dest: Destination) -> str | None:
    """The suppression-list kind whose raw value the command needs (None: no raw value)."""
    kind, _ = split_subject(subject)
    has = dest.identifiers
    if kind == SubjectKind.EMAIL and Identifier.EMAIL in has:
        return "email"
    if kind == SubjectKind.PHONE and Identifier.PHONE in has:
        return "phone"
    if kind == SubjectKind.POSTAL and Identifier.POSTAL_ADDRESS in has:
        return "postal"
    return None


_CARRIES: dict[str, frozenset[Identifier]] = {
    SubjectKind.CUSTOMER: frozenset({Identifier.CUSTOMER_ID}),
    SubjectKind.EMAIL: frozenset({Identifier.EMAIL, Identifier.EMAIL_SHA256}),
    SubjectKind.PHONE: frozenset({Identifier.PHONE, Identifier.PHONE_SHA256}),
    SubjectKind.POSTAL: frozenset({Identifier.POSTAL_ADDRESS}),
}


def usable(subject: str, dest: Destination) -> bool:
    """Whether ``dest`` takes an identifier of this subject's kind (its raw value assumed
    to be in the suppression list)."""
    kind, _ = split_subject(subject)
    carries = _CARRIES.get(kind, frozenset())
    return bool(carries & dest.identifiers & dest.requires_one_of)


@dataclass(frozen=True)
class Suppressed:
    """One subject suppressed for some of the destination's scopes."""

    subject: str
    scopes: tuple[str, ...]
    since: datetime  # the newest of its scopes' ``since``


def replay_command(
    replay_id: str,
    dest: Destination,
    row: Suppressed,
    raw: str | PostalAddressRecord | None,
    issued_at: datetime,
) -> SuppressionCommandRecord | None:
    """The command for ``row`` (``raw``: its decrypted value, when ``sealed_kind`` asked for
    one), or None when the destination cannot act on this subject."""
    kind, value = split_subject(row.subject)
    has = dest.identifiers
    fields: dict[Identifier, str | PostalAddressRecord] = {}
    if kind == SubjectKind.CUSTOMER and Identifier.CUSTOMER_ID in has:
        fields[Identifier.CUSTOMER_ID] = value
    elif kind == SubjectKind.EMAIL:
        if Identifier.EMAIL_SHA256 in has:
            fields[Identifier.EMAIL_SHA256] = value
        if Identifier.EMAIL in has and isinstance(raw, str):
            fields[Identifier.EMAIL] = raw
    elif kind == SubjectKind.PHONE:
        if Identifier.PHONE_SHA256 in has:
            fields[Identifier.PHONE_SHA256] = value
        if Identifier.PHONE in has and isinstance(raw, str):
            fields[Identifier.PHONE] = raw
    elif kind == SubjectKind.POSTAL and Identifier.POSTAL_ADDRESS in has and isinstance(raw, dict):
        fields[Identifier.POSTAL_ADDRESS] = raw
    if not any(i in fields for i in dest.requires_one_of):
        return None

    def text(identifier: Identifier) -> str | None:
        found = fields.get(identifier)
        return found if isinstance(found, str) else None

    postal = fields.get(Identifier.POSTAL_ADDRESS)
    return SuppressionCommandRecord(
        command_id=replay_command_id(replay_id, dest.id, row.subject),
        request_id=request_id_of(replay_id),
        destination=dest.id,
        customer_id=text(Identifier.CUSTOMER_ID),
        email=text(Identifier.EMAIL),
        phone=text(Identifier.PHONE),
        postal_address=postal if isinstance(postal, dict) else None,
        email_sha256=text(Identifier.EMAIL_SHA256),
        phone_sha256=text(Identifier.PHONE_SHA256),
        scopes=list(row.scopes),
        issued_at=to_millis(issued_at),
        deadline=to_millis(issued_at),  # no legal deadline: nobody is waiting for a confirmation
        action=Action.OPT_OUT.value,
        requested_at=to_millis(row.since),
        device_id=None,
    )


class TokenBucket:
    """At most ``rate`` takes per second on average, bursts of up to ``rate`` (one second)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._at = clock()

    def take(self, count: int = 1) -> None:
        """Wait until ``count`` tokens are available and take them."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= count
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the rate so far (None before anything is done)."""
    if done <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - done) * elapsed / done)
