"""Amazon SES notifications delivered by Amazon SNS over HTTP(S).

SNS (https://docs.aws.amazon.com/sns/latest/dg/sns-http-https-endpoint-as-subscriber.html)
POSTs a JSON document; ``x-amz-sns-message-type`` says SubscriptionConfirmation,
Notification or UnsubscribeConfirmation. Signatures
(https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html):
``SignatureVersion`` 1 is SHA1withRSA, 2 is SHA256withRSA, over the canonical string of
"Name\\nvalue\\n" pairs in byte order: Message, MessageId, Subject (if present), Timestamp,
TopicArn, Type for notifications; Message, MessageId, SubscribeURL, Timestamp, Token,
TopicArn, Type for (un)subscription confirmations. The certificate is the one configured
(``OPTOUT_INBOUND_SNS_CERTIFICATE``): we never fetch ``SigningCertURL`` at run time, we only
check that it is an https URL on ``sns.<region>.amazonaws.com``. The topic must be one of
``OPTOUT_INBOUND_SNS_TOPIC_ARNS``. A message whose ``Timestamp`` is older than
``OPTOUT_INBOUND_SNS_MAX_AGE_SECONDS`` is stale.

The SES record inside ``Message``:
- feedback notifications (https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html):
  ``notificationType`` Complaint, ``complaint.complainedRecipients[].emailAddress``;
- event publishing (https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html):
  ``eventType`` Complaint (same object), and ``eventType`` Subscription (list management:
  the recipient used the List-Unsubscribe header or the subscription page) with
  ``subscription.newTopicPreferences.unsubscribeAll`` true: the recipients in
  ``mail.destination`` opted out. A change of single topics only is ignored.
Each recipient is an opt-out of EMAIL_MARKETING; the event id is the SNS ``MessageId``
(``MessageId/N`` for the N-th further recipient of one message). Other types are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.common.contract import Scope, Source
from services.common.errors import ConfigurationError
from services.inbound.base import Delivery, OptOut, Outcome, Rejected, check_age

TYPE_HEADER = "x-amz-sns-message-type"
TOPIC_HEADER = "x-amz-sns-topic-arn"
NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
CONFIRMATION_TYPES = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")


def load_certificates(path: Path) -> list[rsa.RSAPublicKey]:
    """The RSA public keys of the PEM certificate(s) in ``path`` (several: a rotation)."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"setting OPTOUT_INBOUND_SNS_CERTIFICATE: cannot read PEM certificates from {path} ({exc})"
        ) from None
    keys = [c.public_key() for c in certificates]
    rsa_keys = [k for k in keys if isinstance(k, rsa.RSAPublicKey)]
    if not rsa_keys:
        raise ConfigurationError(f"setting OPTOUT_INBOUND_SNS_CERTIFICATE: no RSA certificate in {path}")
    return rsa_keys


def canonical_string(message: dict[str, Any]) -> bytes:
    """The string SNS signs (see the module docstring)."""
    kind = message.get("Type")
    keys = CONFIRMATION_KEYS if kind in CONFIRMATION_TYPES else NOTIFICATION_KEYS
    parts: list[str] = []
    for key in keys:
        if key == "Subject" and message.get("Subject") is None:
            continue
        value = message.get(key)
        if not isinstance(value, str):
            raise Rejected("malformed", f"{key} missing")
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode("utf-8")


def verify(keys: Sequence[rsa.RSAPublicKey], message: dict[str, Any]) -> bool:
    version = message.get("SignatureVersion")
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()  # SNS SignatureVersion 1 is SHA1withRSA
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        return False
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
    except (ValueError, binascii.Error):
        return False
    signed = canonical_string(message)
    for key in keys:
        try:
            key.verify(signature, signed, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            continue
        return True
    return False


def is_sns_url(url: str) -> bool:
    """An https URL on ``sns.<region>.amazonaws.com`` (SigningCertURL, SubscribeURL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "https" and bool(SNS_HOST.match(parts.hostname or ""))


def parse_time(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise Rejected("malformed", "Timestamp is not ISO 8601") from None
    if moment.tzinfo is None:
        raise Rejected("malformed", "Timestamp has no time zone")
    return moment


def ses_recipients(record: Any) -> tuple[list[str], str] | None:
    """The recipients an SES record opts out and when, or None for another record."""
    if not isinstance(record, dict):
        raise Rejected("malformed", "Message is not an SES record")
    kind = record.get("notificationType") or record.get("eventType")
    if kind == "Complaint":
        complaint = record.get("complaint") or {}
        listed = complaint.get("complainedRecipients") if isinstance(complaint, dict) else None
        emails = [r.get("emailAddress") for r in listed or [] if isinstance(r, dict)]
        moment = complaint.get("timestamp") if isinstance(complaint, dict) else None
    elif kind == "Subscription":
        subscription = record.get("subscription") or {}
        new = subscription.get("newTopicPreferences") if isinstance(subscription, dict) else None
        if not (isinstance(new, dict) and new.get("unsubscribeAll") is True):
            return None
        mail = record.get("mail") or {}
        emails = list(mail.get("destination") or []) if isinstance(mail, dict) else []
        moment = subscription.get("timestamp")
    else:
        return None
    if not emails or not all(isinstance(e, str) and e for e in emails):
        raise Rejected("malformed", f"{kind} record without recipients")
    return [str(e) for e in emails], str(moment or "")


def parse_notification(message: dict[str, Any], jurisdiction: str | None) -> tuple[list[OptOut], int]:
    try:
        record = json.loads(str(message.get("Message")))
    except json.JSONDecodeError:
        return [], 1  # a plain-text notification on the topic: not an SES record
    found = ses_recipients(record)
    if found is None:
        return [], 1
    emails, moment = found
    requested_at = parse_time(moment) if moment else parse_time(message.get("Timestamp"))
    message_id = str(message["MessageId"])
    return [
        OptOut(
            message_id if index == 0 else f"{message_id}/{index}",
            {
                "email": email,
                "scopes": [Scope.EMAIL_MARKETING.value],
                "source": Source.PROVIDER_WEBHOOK.value,
                "jurisdiction": jurisdiction,
                "requested_at": requested_at,
            },
        )
        for index, email in enumerate(emails)
    ], 0


@dataclass(frozen=True)
class Ses:
    keys: tuple[rsa.RSAPublicKey, ...]
    topics: frozenset[str]
    max_age: timedelta
    skew: timedelta
    jurisdiction: str | None = None
    name: str = "ses"
    path: str = "/ses/sns"

    def receive(self, delivery: Delivery, now: datetime) -> Outcome:
        try:
            message = json.loads(delivery.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise Rejected("malformed", "body is not JSON") from None
        if not isinstance(message, dict):
            raise Rejected("malformed", "body is not a JSON object")
        kind = message.get("Type")
        if delivery.header(TYPE_HEADER) != kind:
            raise Rejected("malformed", "x-amz-sns-message-type does not match Type")
        if not is_sns_url(str(message.get("SigningCertURL") or "")):
            raise Rejected("bad_signature", "SigningCertURL is not an SNS URL")
        if not verify(self.keys, message):
            raise Rejected("bad_signature", "SNS signature does not verify")
        topic = str(message.get("TopicArn"))
        if topic not in self.topics:
            raise Rejected("unknown_topic", "TopicArn is not an allowed topic")
        check_age(parse_time(message.get("Timestamp")), now, self.max_age, self.skew)
        if kind == "SubscriptionConfirmation":
            url = str(message.get("SubscribeURL") or "")
            if not is_sns_url(url):
                raise Rejected("malformed", "SubscribeURL is not an SNS URL")
            return Outcome(ignored=1, confirm_url=url, topic=topic)
        if kind != "Notification":
            return Outcome(ignored=1, topic=topic)
        opt_outs, ignored = parse_notification(message, self.jurisdiction)
        return Outcome(tuple(opt_outs), ignored, topic=topic)
