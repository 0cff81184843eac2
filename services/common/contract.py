"""The public contract shared by every service: scopes, sources, ack statuses,
destinations and the routing from scopes to destinations.

Adding a destination is one entry in ``DESTINATIONS`` (plus a connector); nothing
else in the code names destinations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import SecretStr


class Scope(StrEnum):
    EMAIL_MARKETING = "EMAIL_MARKETING"
    POSTAL_MARKETING = "POSTAL_MARKETING"
    THIRD_PARTY_SHARING = "THIRD_PARTY_SHARING"
    ALL = "ALL"


class Source(StrEnum):
    WEB_FORM = "WEB_FORM"
    EMAIL_LINK = "EMAIL_LINK"
    ONE_CLICK = "ONE_CLICK"
    CALL_CENTER = "CALL_CENTER"
    GPC_SIGNAL = "GPC_SIGNAL"
    API = "API"
    OTHER = "OTHER"


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


DESTINATIONS: tuple[Destination, ...] = (
    Destination(
        id="email_provider",
        scopes=frozenset({Scope.EMAIL_MARKETING}),
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL}),
        requires_one_of=frozenset({Identifier.EMAIL}),
    ),
    Destination(
        id="mail_house",
        scopes=frozenset({Scope.POSTAL_MARKETING}),
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.POSTAL_ADDRESS}),
        requires_one_of=frozenset({Identifier.POSTAL_ADDRESS}),
    ),
    Destination(
        id="third_party_sharing",
        scopes=frozenset({Scope.THIRD_PARTY_SHARING}),
        # Hashes only: third parties never see a raw email address or phone number.
        # customer_id is the business's own pseudonymous id, used to match partner
        # records that were shared under it.
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}),
        requires_one_of=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL_SHA256, Identifier.PHONE_SHA256}),
    ),
)

DESTINATIONS_BY_ID: dict[str, Destination] = {d.id: d for d in DESTINATIONS}


def destination(destination_id: str) -> Destination:
    try:
        return DESTINATIONS_BY_ID[destination_id]
    except KeyError:
        known = ", ".join(sorted(DESTINATIONS_BY_ID))
        raise ValueError(f"unknown destination {destination_id!r}; known: {known}") from None


def destinations_for_scopes(scopes: Iterable[Scope]) -> list[Destination]:
    """Destinations a set of scopes touches, in table order. ``ALL`` touches every one."""
    wanted = set(scopes)
    if Scope.ALL in wanted:
        return list(DESTINATIONS)
    return [d for d in DESTINATIONS if d.scopes & wanted]
