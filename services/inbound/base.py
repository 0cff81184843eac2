"""The one small interface every provider module implements, and what they share. Pure.

A provider turns one received webhook (``Delivery``: the public URL it was sent to, its
headers and raw body) into an ``Outcome`` (the opt-outs to publish, the reply) or raises
``Rejected`` (forged, stale, malformed). Verification and parsing are pure functions of
the delivery and the current time; the HTTP layer (``services.inbound.app``) does the I/O:
replay memory, publishing, metrics.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

# uuid5 namespace of inbound event ids: uuid5(INBOUND_NAMESPACE, "<provider>:<provider event id>").
INBOUND_NAMESPACE = uuid.UUID("9a4f2c6e-71d3-4b8a-9e15-c2d7f0a8b364")


def inbound_event_id(provider: str, provider_event_id: str) -> str:
    """The OptOutRequested event id of a provider's event: a re-delivered webhook (same
    provider event id) is the same request, recorded once by intake."""
    return str(uuid.uuid5(INBOUND_NAMESPACE, f"{provider}:{provider_event_id}"))


class Rejected(Exception):
    """The delivery is refused; ``reason`` is a metric label (bad_signature, stale, replay,
    malformed). Nothing is published."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as received: ``url`` is the public URL (``OPTOUT_INBOUND_PUBLIC_URL``
    + path + query), ``headers`` have lower-case names."""

    url: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True)
class OptOut:
    """One OptOutRequested to publish: the provider's own event id and the publisher's
    fields (``services.publisher.publish.FIELDS``) but the event id."""

    provider_event_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Outcome:
    """What a verified delivery asks for. ``replay_token``: remember it once published and
    refuse it afterwards (Mailgun). ``confirm_url``: an SNS subscription to confirm."""

    opt_outs: tuple[OptOut, ...] = ()
    ignored: int = 0
    invalid: int = 0  # opt-out events too broken to publish, skipped (the rest are published)
    reply: Reply = field(default_factory=Reply)
    replay_token: str | None = None
    confirm_url: str | None = None
    topic: str | None = None


class Provider(Protocol):
    """One provider's endpoint: ``name`` (metric label, event id prefix), ``path``."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...

    def receive(self, delivery: Delivery, now: datetime) -> Outcome:
        """Verify and parse; raise ``Rejected``."""
        ...


def check_age(signed_at: datetime, now: datetime, max_age: timedelta, skew: timedelta) -> None:
    """Refuse a signed moment older than ``max_age`` or further than ``skew`` in the future."""
    if signed_at < now - max_age:
        raise Rejected("stale", f"signed {int((now - signed_at).total_seconds())} s ago")
    if signed_at > now + skew:
        raise Rejected("stale", "signed in the future")
