"""Asking "is this person suppressed?": identifiers to subjects, and the answer from the
suppression state. Pure (no I/O): the lookup API, the compacted-topic client and the
audience scrub share it.

A *subject* is one pseudonymous identifier, exactly as intake writes the suppression state
(``services/domain/preferences.py``): ``email_sha256:<hex>`` of the normalized email,
``phone_sha256:<hex>`` of the E.164 phone, ``cust:<customer id>``. A raw email or phone is
normalized with ``services/domain/identity.py`` exactly as intake normalizes a request's, then
hashed, so the same person gives the same subject whoever asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from services.common.clock import to_millis
from services.common.contract import CONCRETE_SCOPES, Scope
from services.common.errors import PoisonMessage
from services.common.records import (
    ScopeStateRecord,
    SuppressionStateRecord,
    as_datetime,
)
from services.domain.identifier_kind import IDENTIFIER_KINDS as IDENTIFIER_KINDS
from services.domain.identifier_kind import IdentifierKind as IdentifierKind
from services.domain.identity import check_text, normalize_email, normalize_phone, sha256_hex

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_CUSTOMER_ID = 200  # as validation.validate_request accepts it


class BadIdentifier(ValueError):
    """An identifier that can name nobody; ``reason`` is machine-readable, never the value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_sha256_hex(value: str) -> bool:
    return bool(_HEX64.match(value))


def subject_of(kind: IdentifierKind, value: str, phone_region: str = "US") -> str:
    """The subject of one identifier; raise ``BadIdentifier`` when it cannot be one."""
    text = value.strip()
    if not text:
        raise BadIdentifier(f"empty_{kind.value}")
    try:
        if kind is IdentifierKind.EMAIL:
            return f"email_sha256:{sha256_hex(normalize_email(text))}"
        if kind is IdentifierKind.PHONE:
            return f"phone_sha256:{sha256_hex(normalize_phone(text, phone_region))}"
        if kind is IdentifierKind.CUSTOMER_ID:
            return f"cust:{check_text('customer_id', text, MAX_CUSTOMER_ID)}"
    except PoisonMessage as exc:
        raise BadIdentifier(exc.reason) from None
    if not is_sha256_hex(text):
        raise BadIdentifier(f"invalid_{kind.value}")
    prefix = "email_sha256" if kind is IdentifierKind.EMAIL_SHA256 else "phone_sha256"
    return f"{prefix}:{text.lower()}"


def parse_scope(value: str | None) -> Scope | None:
    """A concrete scope, or None (every scope) for an empty value or ``ALL``."""
    if value is None or not value.strip() or value.strip().upper() == Scope.ALL.value:
        return None
    try:
        scope = Scope(value.strip().upper())
    except ValueError:
        raise BadIdentifier("invalid_scope") from None
    return scope


@dataclass(frozen=True)
class ScopeState:
    """The state of one subject for one concrete scope (a ``suppression_state`` row)."""

    scope: str
    suppressed: bool
    since: datetime
    request_id: str
    action: str

    def as_json(self) -> dict[str, object]:
        return {
            "suppressed": self.suppressed,
            "since": self.since.isoformat(),
            "request_id": self.request_id,
            "action": self.action,
        }


@dataclass(frozen=True)
class Answer:
    """Is one subject suppressed (for ``scope``, or for any scope when None)?"""

    subject: str
    scope: Scope | None
    states: tuple[ScopeState, ...]  # the scopes asked about that have a state, contract order

    @property
    def suppressed(self) -> bool:
        return any(s.suppressed for s in self.states)

    def as_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "suppressed": self.suppressed,
            "scopes": {s.scope: s.as_json() for s in self.states},
        }


_ORDER = {s.value: i for i, s in enumerate(CONCRETE_SCOPES)}
# A request that wins a subject wins it for each of its scopes, and a chunk's states share
# one ``updated_at``: the same instants recur, converted once each.
_millis = lru_cache(maxsize=4096)(to_millis)


def _rank(state: ScopeState) -> tuple[int, str]:
    return (_ORDER.get(state.scope, len(_ORDER)), state.scope)


def ordered(states: Iterable[ScopeState]) -> tuple[ScopeState, ...]:
    """Contract order (scopes unknown to this version last, by name)."""
    listed = tuple(states)
    return listed if len(listed) < 2 else tuple(sorted(listed, key=_rank))


def answer(subject: str, scope: Scope | None, states: Iterable[ScopeState]) -> Answer:
    """The answer for ``subject`` from its state rows (none: never asked, not suppressed)."""
    wanted = [s for s in states if scope is None or s.scope == scope.value]
    return Answer(subject, scope, ordered(wanted))


def answers(
    subjects: Iterable[str], scope: Scope | None, rows: Mapping[str, Iterable[ScopeState]]
) -> list[Answer]:
    """One answer per subject (in order) from the rows found, grouped by subject."""
    return [answer(s, scope, rows.get(s, ())) for s in subjects]


def suppressed_scopes(states: Iterable[ScopeState]) -> list[str]:
    return [s.scope for s in ordered(states) if s.suppressed]


# --- the compacted topic optout.suppressions ---------------------------------------------------
def state_record(subject: str, states: Iterable[ScopeState], now: datetime) -> SuppressionStateRecord | None:
    """The topic's value for ``subject``: its state per scope, or None (a tombstone) when no
    scope is suppressed any more (nothing left for a sender to filter)."""
    listed = ordered(states)
    if not any(s.suppressed for s in listed):
        return None
    return SuppressionStateRecord(
        subject=subject,
        scopes=[
            ScopeStateRecord(
                scope=s.scope,
                suppressed=s.suppressed,
                since=_millis(s.since),
                request_id=s.request_id,
                action=s.action,
            )
            for s in listed
        ],
        updated_at=_millis(now),
    )


def states_of(record: SuppressionStateRecord) -> tuple[ScopeState, ...]:
    """The scope states a topic value carries."""
    return ordered(
        ScopeState(s["scope"], s["suppressed"], as_datetime(s["since"]), s["request_id"], s["action"])
        for s in record["scopes"]
    )
