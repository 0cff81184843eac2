"""SMS replies through a Twilio-style inbound message webhook: STOP and START keywords.

Request (https://www.twilio.com/docs/messaging/guides/webhook-request): a form POST with
``MessageSid``, ``From``, ``To``, ``Body``... Security
(https://www.twilio.com/docs/usage/webhooks/webhooks-security): ``X-Twilio-Signature`` is
base64(HMAC-SHA1(auth token, full URL + every POST parameter, sorted by name, as name +
value)). The URL is the one configured at Twilio, so it is rebuilt from
``OPTOUT_INBOUND_PUBLIC_URL`` (behind a proxy the URL we see differs). Twilio signs no
timestamp: there is nothing to call stale. A replay is the same ``MessageSid``, hence the
same event id, which intake records once.

Keywords (the whole message, any case, surrounding spaces and punctuation ignored):
STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT opt out of SMS_MARKETING;
START, UNSTOP, YES opt back in. The reply is TwiML with the one confirmation text (no
marketing); any other message publishes nothing and gets an empty TwiML response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import phonenumbers
from pydantic import SecretStr

from services.common.contract import Action, Scope, Source
from services.inbound.base import Delivery, OptOut, Outcome, Rejected, Reply

SIGNATURE_HEADER = "X-Twilio-Signature"
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
TWIML_TYPE = "application/xml"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MAX_FIELDS = 100


def _edge(character: str) -> bool:
    """Ignored around a keyword: white space, punctuation, symbols, control characters."""
    return character.isspace() or unicodedata.category(character)[0] in "PZSC"


def keyword_action(body: str) -> Action | None:
    """OPT_OUT for a STOP keyword, OPT_IN for a START keyword, None for anything else."""
    start, end = 0, len(body)
    while start < end and _edge(body[start]):
        start += 1
    while end > start and _edge(body[end - 1]):
        end -= 1
    word = body[start:end].upper()
    if word in OPT_OUT_KEYWORDS:
        return Action.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return Action.OPT_IN
    return None


def signature(auth_token: str, url: str, params: Mapping[str, Sequence[str]]) -> str:
    """Twilio's signature of a form POST to ``url`` (values of one name sorted, as the
    Twilio helper libraries do)."""
    data = url
    for name in sorted(params):
        for value in sorted(params[name]):
            data += name + value
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(auth_token: str, url: str, params: Mapping[str, Sequence[str]], given: str) -> bool:
    return hmac.compare_digest(signature(auth_token, url, params), given.strip())


def twiml(message: str | None) -> str:
    if message is None:
        return EMPTY_TWIML
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{escape(message)}</Message></Response>'


def jurisdiction_of(phone: str) -> str | None:
    """The region of an E.164 number: by its area code within a shared country code (+1: US
    or CA, or another NANP country), else the country code's main region (+1: US); None
    when it has none."""
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(parsed)
    if not region or region == "ZZ":
        region = phonenumbers.region_code_for_country_code(parsed.country_code or 0)
    return region if region and region not in ("ZZ", "001") else None


def parse_form(body: bytes) -> dict[str, list[str]]:
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise Rejected("malformed", "body is not a form") from None


@dataclass(frozen=True)
class TwilioSms:
    auth_token: SecretStr
    jurisdiction: str | None = None
    stop_reply: str = "You are unsubscribed. Reply START to resubscribe."
    start_reply: str = "You are resubscribed. Reply STOP to unsubscribe."
    name: str = "twilio"
    path: str = "/twilio/sms"

    def receive(self, delivery: Delivery, now: datetime) -> Outcome:
        given = delivery.header(SIGNATURE_HEADER)
        params = parse_form(delivery.body)
        if not given or not verify(self.auth_token.get_secret_value(), delivery.url, params, given):
            raise Rejected("bad_signature", "X-Twilio-Signature does not match")
        sid = (params.get("MessageSid") or params.get("SmsSid") or [""])[0].strip()
        sender = (params.get("From") or [""])[0].strip()
        if not sid or not sender:
            raise Rejected("malformed", "MessageSid or From missing")
        action = keyword_action((params.get("Body") or [""])[0])
        if action is None:
            return Outcome(ignored=1, reply=Reply(body=twiml(None), content_type=TWIML_TYPE))
        text = self.stop_reply if action is Action.OPT_OUT else self.start_reply
        opt_out = OptOut(
            sid,
            {
                "phone": sender,
                "scopes": [Scope.SMS_MARKETING.value],
                "source": Source.SMS_REPLY.value,
                "action": action.value,
                "jurisdiction": self.jurisdiction or jurisdiction_of(sender),
                "requested_at": now,
            },
        )
        return Outcome((opt_out,), reply=Reply(body=twiml(text), content_type=TWIML_TYPE))
