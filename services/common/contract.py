"""The public contract shared by every service: scopes, sources, ack statuses,
destinations and the routing from scopes to destinations.

Destinations are configuration: the destinations file (``OPTOUT_DESTINATIONS_FILE``,
default ``deploy/destinations.toml``; see docs/destinations.md) lists them, and
``services.common.destinations`` loads it into a ``Destinations`` value at start-up.
Adding a destination is an entry in that file; nothing in the code names destinations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import SecretStr


class Scope(StrEnum):
    EMAIL_MARKETING = "EMAIL_MARKETING"
    POSTAL_MARKETING = "POSTAL_MARKETING"
    THIRD_PARTY_SHARING = "THIRD_PARTY_SHARING"
    ALL = "ALL"
    SMS_MARKETING = "SMS_MARKETING"  # schema version 2


# The scopes a person can be suppressed for; ALL stands for every one of them.
CONCRETE_SCOPES: tuple[Scope, ...] = (
    Scope.EMAIL_MARKETING,
    Scope.POSTAL_MARKETING,
    Scope.THIRD_PARTY_SHARING,
    Scope.SMS_MARKETING,
)


class Action(StrEnum):
    """OPT_OUT: stop. OPT_IN: the person opted back in (schema version 2)."""

    OPT_OUT = "OPT_OUT"
    OPT_IN = "OPT_IN"


class Source(StrEnum):
    WEB_FORM = "WEB_FORM"
    EMAIL_LINK = "EMAIL_LINK"
    ONE_CLICK = "ONE_CLICK"
    CALL_CENTER = "CALL_CENTER"
    GPC_SIGNAL = "GPC_SIGNAL"
    API = "API"
    OTHER = "OTHER"
    SMS_REPLY = "SMS_REPLY"  # schema version 2: a STOP/START text
    PROVIDER_WEBHOOK = "PROVIDER_WEBHOOK"  # schema version 2: an email provider's event


class AckStatus(StrEnum):
    APPLIED = "APPLIED"
    ALREADY_SUPPRESSED = "ALREADY_SUPPRESSED"
    REJECTED = "REJECTED"


class Identifier(StrEnum):
    """Identifiers a destination can use. ``*_SHA256`` are hashes of the normalized value."""

    CUSTOMER_ID = "customer_id"
    EMAIL = "email"
    PHONE = "phone"
    POSTAL_ADDRESS = "postal_address"
    EMAIL_SHA256 = "email_sha256"
    PHONE_SHA256 = "phone_sha256"
    DEVICE_ID = "device_id"  # a pseudonymous browser/device id (schema version 2)


@dataclass(frozen=True)
class Destination:
    """A system that must obey an opt-out.

    ``identifiers``: what its commands carry (only these fields are filled in).
    ``requires_one_of``: the destination applies to a request only if the request
    has at least one of these.
    """

    id: str
    scopes: frozenset[Scope]
    identifiers: frozenset[Identifier]
    requires_one_of: frozenset[Identifier]
    # Which connector serves it (a connector kind, e.g. "sendgrid"), that kind's options
    # (the destination's ``[settings]`` table in the destinations file, validated by the
    # kind) and its credentials, resolved from the environment or files at start-up.
    kind: str = ""
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    credentials: Mapping[str, SecretStr] = field(default_factory=dict, compare=False, repr=False)


class Destinations:
    """The destinations of one deployment (the destinations file, loaded once at start-up
    by ``services.common.destinations``), in file order. Routing asks this value, never a
    global, so the domain stays pure and two deployments can differ."""

    __slots__ = ("_all", "_by_id")

    def __init__(self, destinations: Iterable[Destination]) -> None:
        self._all = tuple(destinations)
        self._by_id = {d.id: d for d in self._all}

    def __iter__(self) -> Iterator[Destination]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, name: object) -> bool:
        return name in self._by_id

    def __repr__(self) -> str:
        return f"Destinations({', '.join(self._by_id)})"

    @property
    def names(self) -> list[str]:
        return list(self._by_id)

    def get(self, name: str) -> Destination | None:
        return self._by_id.get(name)

    def __getitem__(self, name: str) -> Destination:
        try:
            return self._by_id[name]
        except KeyError:
            known = ", ".join(self._by_id) or "none"
            raise KeyError(f"unknown destination {name!r}; known: {known}") from None

    def for_scopes(self, scopes: Iterable[Scope]) -> list[Destination]:
        """Destinations a set of scopes touches, in file order. ``ALL`` touches every one."""
        wanted = set(scopes)
        if Scope.ALL in wanted:
            return list(self._all)
        return [d for d in self._all if d.scopes & wanted]

    def unserved_scopes(self) -> list[Scope]:
        """Scopes someone may request that no destination serves (``ALL`` excepted)."""
        served = {s for d in self._all for s in d.scopes}
        return [s for s in Scope if s is not Scope.ALL and s not in served]


# Request ids of the commands `optout reconcile` re-issues (``reconcile:<destination>:...``):
# there is no customer request behind them, so the confirmer records and confirms nothing
# for their acks (services/confirmer/step.py) and no destination_status row exists for them.
RECONCILE_REQUEST_PREFIX = "reconcile:"


def is_reconcile_request(request_id: str) -> bool:
    return request_id.startswith(RECONCILE_REQUEST_PREFIX)


# Request ids of the commands `optout replay` sends (``replay:<replay id>``): the confirmer
# records their acks in ``replay_commands`` and never confirms anything for them.
REPLAY_REQUEST_PREFIX = "replay:"


def is_replay_request(request_id: str) -> bool:
    return request_id.startswith(REPLAY_REQUEST_PREFIX)
