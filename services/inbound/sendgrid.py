"""SendGrid Event Webhook: ``unsubscribe``, ``group_unsubscribe`` and ``spamreport`` events.

Signed Event Webhook (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features):
SendGrid signs ``timestamp + raw body`` with ECDSA (P-256, SHA-256); the base64 DER
signature is in ``X-Twilio-Email-Event-Webhook-Signature``, the timestamp (Unix seconds)
in ``X-Twilio-Email-Event-Webhook-Timestamp``; the verification key is shown base64 DER
(SubjectPublicKeyInfo) under Mail Settings. The body is a JSON array of events
(https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event), each with
``event``, ``email``, ``timestamp`` and the unique ``sg_event_id``.

Every one of the three events is an opt-out of EMAIL_MARKETING: ``group_unsubscribe``
(one unsubscribe group) is widened to all marketing email (groups are not mapped), and a
spam report is the strongest "stop" there is. Other events are ignored (200).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from services.common.contract import Scope, Source
from services.common.errors import ConfigurationError
from services.inbound.base import Delivery, OptOut, Outcome, Rejected, check_age

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
OPT_OUT_EVENTS = frozenset({"unsubscribe", "group_unsubscribe", "spamreport"})
MAX_EVENTS = 10_000


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER); ``ConfigurationError`` else."""
    try:
        key = load_der_public_key(base64.b64decode(text.strip(), validate=True))
    except (ValueError, binascii.Error):
        raise ConfigurationError(
            "setting OPTOUT_INBOUND_SENDGRID_PUBLIC_KEY is not a base64 DER public key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError("setting OPTOUT_INBOUND_SENDGRID_PUBLIC_KEY is not an ECDSA P-256 key")
    return key


def verify(key: ec.EllipticCurvePublicKey, signature: str, timestamp: str, body: bytes) -> bool:
    """Does ``signature`` (base64 DER ECDSA) sign ``timestamp + body``?"""
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw, timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def parse(body: bytes, jurisdiction: str | None) -> tuple[list[OptOut], int, int]:
    """The opt-outs among the events, how many other events were ignored, and how many
    opt-out events lacked what we need (skipped, so one broken event cannot hold back the
    batch: SendGrid would re-send it for a day)."""
    try:
        events = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejected("malformed", "body is not JSON") from None
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise Rejected("malformed", "body is not a JSON array of events")
    opt_outs: list[OptOut] = []
    ignored = invalid = 0
    for event in events:
        if not isinstance(event, dict) or event.get("event") not in OPT_OUT_EVENTS:
            ignored += 1
            continue
        try:
            opt_outs.append(_opt_out(event, jurisdiction))
        except Rejected:
            invalid += 1
    return opt_outs, ignored, invalid


def _opt_out(event: dict[str, Any], jurisdiction: str | None) -> OptOut:
    event_id, email, moment = event.get("sg_event_id"), event.get("email"), event.get("timestamp")
    if not isinstance(event_id, str) or not event_id or not isinstance(email, str):
        raise Rejected("malformed", "an opt-out event without sg_event_id or email")
    if not isinstance(moment, int | float) or isinstance(moment, bool):
        raise Rejected("malformed", "an opt-out event without a numeric timestamp")
    return OptOut(
        event_id,
        {
            "email": email,
            "scopes": [Scope.EMAIL_MARKETING.value],
            "source": Source.PROVIDER_WEBHOOK.value,
            "jurisdiction": jurisdiction,
            "requested_at": datetime.fromtimestamp(moment, tz=UTC),
        },
    )


@dataclass(frozen=True)
class SendGrid:
    key: ec.EllipticCurvePublicKey
    max_age: timedelta
    skew: timedelta
    jurisdiction: str | None = None
    name: str = "sendgrid"
    path: str = "/sendgrid/events"

    def receive(self, delivery: Delivery, now: datetime) -> Outcome:
        signature, timestamp = delivery.header(SIGNATURE_HEADER), delivery.header(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            raise Rejected("bad_signature", "signature or timestamp header missing")
        if not verify(self.key, signature, timestamp, delivery.body):
            raise Rejected("bad_signature", "ECDSA signature does not verify")
        try:
            signed_at = datetime.fromtimestamp(int(timestamp), tz=UTC)
        except (ValueError, OverflowError):
            raise Rejected("malformed", "timestamp header is not Unix seconds") from None
        check_age(signed_at, now, self.max_age, self.skew)
        opt_outs, ignored, invalid = parse(delivery.body, self.jurisdiction)
        return Outcome(tuple(opt_outs), ignored, invalid)
