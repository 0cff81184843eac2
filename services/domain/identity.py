"""Normalization, validation and hashing of personal identifiers.

Pure functions: unit tests and property tests call them without a broker.
Every failure raises ``PoisonMessage`` with a machine-readable reason, because a
request with a malformed identifier can never be processed as sent.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

import phonenumbers

from services.common.errors import PoisonMessage

MAX_EMAIL_LENGTH = 254
MAX_LOCAL_PART = 64
MAX_TEXT_FIELD = 512

# Deliberately simple and strict: no quoted local parts, no IP-literal domains,
# no whitespace. International domains and local parts (UTF-8) are allowed.
_EMAIL_LOCAL = re.compile(r"^[^\s@\"(),:;<>\[\]\\]+$")
_DOMAIN_LABEL = re.compile(r"^(?!-)[^\s@\"(),:;<>\[\]\\.]{1,63}(?<!-)$")


def check_text(field: str, value: str, max_length: int = MAX_TEXT_FIELD) -> str:
    """Reject text the database cannot hold or that is absurdly long."""
    if "\x00" in value:
        raise PoisonMessage("invalid_characters", f"{field} contains a NUL character")
    if len(value) > max_length:
        raise PoisonMessage("field_too_long", f"{field} is longer than {max_length} characters")
    return value


# The usual address, already trimmed and lower-case: every string this matches passes each
# check of ``normalize_email`` (a subset of what they accept: ASCII letters, digits and
# ``._%+-`` in the local part, no dot first, last or doubled; two or more labels of letters,
# digits and inner hyphens), so it is returned as it is. Checked against the full checks on
# generated addresses: ``tests/unit/test_intake_speedups.py``.
_PLAIN_EMAIL = re.compile(
    r"(?!\.)(?!.*\.\.)[a-z0-9._%+-]{1,64}(?<!\.)@"
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


def normalize_email(raw: str) -> str:
    """Trim and lower-case an email address; raise ``PoisonMessage('invalid_email')``."""
    if len(raw) <= MAX_EMAIL_LENGTH and _PLAIN_EMAIL.fullmatch(raw):
        return raw
    email = raw.strip()
    # NFC leaves ASCII text as it is: normalize only what may change.
    email = (email if email.isascii() else unicodedata.normalize("NFC", email)).lower()
    if len(email) > MAX_EMAIL_LENGTH or email.count("@") != 1:
        raise PoisonMessage("invalid_email", "not a single-@ address of at most 254 characters")
    local, _, domain = email.partition("@")
    if not local or len(local) > MAX_LOCAL_PART or not _EMAIL_LOCAL.match(local):
        raise PoisonMessage("invalid_email", "bad local part")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise PoisonMessage("invalid_email", "bad dots in local part")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise PoisonMessage("invalid_email", "bad domain")
    # Control and format characters (Unicode category C*) are exactly the non-printable
    # ones once whitespace has been refused above.
    if not email.isprintable():
        raise PoisonMessage("invalid_email", "control or format characters")
    return email


def normalize_phone(raw: str, default_region: str = "US") -> str:
    """Return the E.164 form of a phone number; raise ``PoisonMessage('invalid_phone')``.
    Parsing is the most expensive check of a request: a number already in the E.164 form of
    the North American plan is returned as it is (``is_nanp_e164``), and any other number
    seen again (a person's repeated requests, a redelivered batch) is parsed once."""
    text = raw.strip()
    if is_nanp_e164(text):
        return text
    return _parse_phone(text, default_region)


def is_nanp_e164(text: str) -> bool:
    """``+1`` and ten ASCII digits: phonenumbers reads every such string as a possible number
    of country code 1 (the plan's only length, 10, in every region it covers) and formats it
    back unchanged, whatever the default region (a leading ``+`` ignores it). Checked
    against the parse on generated numbers: ``tests/unit/test_intake_speedups.py``."""
    return len(text) == 12 and text.startswith("+1") and text.isascii() and text[2:].isdigit()


@lru_cache(maxsize=4096)
def _parse_phone(text: str, default_region: str) -> str:
    if not text or len(text) > 40:
        raise PoisonMessage("invalid_phone", "empty or longer than 40 characters")
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise PoisonMessage("invalid_phone", exc._msg) from None
    if not phonenumbers.is_possible_number(parsed):
        raise PoisonMessage("invalid_phone", "not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def subject_key(
    customer_id: str | None,
    email: str | None,
    phone: str | None,
    postal_key: str | None,
    device_id: str | None = None,
) -> str:
    """The Kafka key of an OptOutRequested: customer id, else email, else phone, else
    address, else device id (``device_sha256:<hex>``).

    All requests about one person land on one partition, in order. The key carries no raw
    contact detail: ``cust:<customer_id>`` (the business's pseudonymous id), else
    ``email_sha256:<hex>`` of the normalized email, ``phone_sha256:<hex>`` of the E.164
    phone, ``postal:<hex>`` of the normalized address key.
    """
    if customer_id:
        return f"cust:{customer_id}"
    for prefix, value in (
        ("email_sha256", email),
        ("phone_sha256", phone),
        ("postal", postal_key),
        ("device_sha256", device_id),
    ):
        if value:
            return f"{prefix}:{sha256_hex(value)}"
    raise PoisonMessage("no_identifier", "customer_id, email, phone and postal_address are all empty")


def mask_email(email: str) -> str:
    """``jane.doe@example.com`` -> ``j•••••e@e•••••e.com``: enough for a person to recognise."""
    local, _, domain = email.partition("@")
    host, _, tld = domain.rpartition(".")

    def mask(part: str) -> str:
        if len(part) <= 2:
            return part[:1] + "•"
        return part[0] + "•" * min(len(part) - 2, 5) + part[-1]

    return f"{mask(local)}@{mask(host)}.{tld}" if host else f"{mask(local)}@{mask(domain)}"
