"""Mailgun webhooks: ``unsubscribed`` and ``complained`` events.

Securing webhooks (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks):
the JSON body carries ``signature: {timestamp, token, signature}`` next to ``event-data``;
``signature`` is the hex HMAC-SHA256 of ``timestamp + token`` (no separator) keyed with the
webhook signing key. Mailgun recommends refusing stale timestamps and caching tokens so a
token is used once: the token is returned as ``Outcome.replay_token`` and the service
remembers it in PostgreSQL (``inbound_replay_tokens``, shared by every instance).
Event data (https://documentation.mailgun.com/docs/mailgun/user-manual/events/webhooks):
``event``, ``id`` (the event id), ``timestamp``, ``recipient``. Both events are opt-outs of
EMAIL_MARKETING; other events are ignored (200).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr

from services.common.contract import Scope, Source
from services.inbound.base import Delivery, OptOut, Outcome, Rejected, check_age

OPT_OUT_EVENTS = frozenset({"unsubscribed", "complained"})


def expected_signature(signing_key: str, timestamp: str, token: str) -> str:
    message = (timestamp + token).encode("utf-8")
    return hmac.new(signing_key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(signing_key: str, timestamp: str, token: str, signature: str) -> bool:
    return hmac.compare_digest(expected_signature(signing_key, timestamp, token), signature.strip().lower())


def _text(value: Any) -> str:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""


def parse(event: Any, jurisdiction: str | None) -> OptOut | None:
    """The opt-out an ``event-data`` object asks for, or None for another event."""
    if not isinstance(event, dict):
        raise Rejected("malformed", "event-data is not an object")
    if event.get("event") not in OPT_OUT_EVENTS:
        return None
    event_id, recipient, moment = event.get("id"), event.get("recipient"), event.get("timestamp")
    if not isinstance(event_id, str) or not event_id or not isinstance(recipient, str):
        raise Rejected("malformed", "an opt-out event without id or recipient")
    if not isinstance(moment, int | float) or isinstance(moment, bool):
        raise Rejected("malformed", "an opt-out event without a numeric timestamp")
    return OptOut(
        event_id,
        {
            "email": recipient,
            "scopes": [Scope.EMAIL_MARKETING.value],
            "source": Source.PROVIDER_WEBHOOK.value,
            "jurisdiction": jurisdiction,
            "requested_at": datetime.fromtimestamp(moment, tz=UTC),
        },
    )


@dataclass(frozen=True)
class Mailgun:
    signing_key: SecretStr
    max_age: timedelta
    skew: timedelta
    jurisdiction: str | None = None
    name: str = "mailgun"
    path: str = "/mailgun/events"

    def receive(self, delivery: Delivery, now: datetime) -> Outcome:
        try:
            payload = json.loads(delivery.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise Rejected("malformed", "body is not JSON") from None
        signed = payload.get("signature") if isinstance(payload, dict) else None
        if not isinstance(signed, dict):
            raise Rejected("bad_signature", "no signature object")
        timestamp, token, signature = (_text(signed.get(k)) for k in ("timestamp", "token", "signature"))
        if not (timestamp and token and signature):
            raise Rejected("bad_signature", "signature object incomplete")
        if not verify(self.signing_key.get_secret_value(), timestamp, token, signature):
            raise Rejected("bad_signature", "HMAC does not match")
        try:
            signed_at = datetime.fromtimestamp(int(timestamp), tz=UTC)
        except (ValueError, OverflowError):
            raise Rejected("malformed", "timestamp is not Unix seconds") from None
        check_age(signed_at, now, self.max_age, self.skew)
        opt_out = parse(payload.get("event-data"), self.jurisdiction)
        if opt_out is None:
            return Outcome(ignored=1, replay_token=token)
        return Outcome((opt_out,), replay_token=token)
