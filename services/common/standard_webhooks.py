"""Standard Webhooks signatures (symmetric ``v1``, HMAC-SHA256): signing for the
``webhook_partners`` connector, verifying for the sample partner receiver.

Specification (version 1.0.0):
https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
(overview: https://www.standardwebhooks.com/).

* Headers ``webhook-id`` (unique per event, the same on every retry of it),
  ``webhook-timestamp`` (integer Unix seconds of the attempt) and ``webhook-signature``.
* Signed content: ``{webhook-id}.{webhook-timestamp}.{body}``, the body byte for byte as sent.
* A secret is ``whsec_`` + base64 of the key bytes (the spec asks for 24 to 64 random bytes);
  the HMAC key is the base64-decoded part.
* ``webhook-signature`` is a space-separated list of ``v1,<base64 HMAC-SHA256>``: during a
  rotation the sender signs with every current secret, so old and new both verify.
* A receiver compares in constant time, refuses a timestamp more than 5 minutes away from
  its clock, and uses ``webhook-id`` as an idempotency key (never processes an id twice).

Pure functions: no clock, no I/O (the caller passes ``now``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
TOLERANCE_SECONDS = 300  # the spec's "5 minutes", both directions
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


class VerificationError(Exception):
    """A delivery that must not be trusted; ``str()`` says why (no secret material)."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ``ValueError`` naming the problem."""
    text = secret.strip()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"a signing secret must look like {SECRET_PREFIX}<base64>")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a signing secret's part after whsec_ must be base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a signing secret must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")
    return key


def encode_secret(key: bytes) -> str:
    """``whsec_<base64>`` for raw key bytes (for generating secrets and in tests)."""
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    return f"{SIGNATURE_VERSION},{base64.b64encode(_digest(key, msg_id, timestamp, body)).decode('ascii')}"


def signed_headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers for ``body``, signed with every key (rotation: all are current)."""
    if not keys:
        raise ValueError("at least one signing key is needed")
    if "." in msg_id or not msg_id:
        raise ValueError("a webhook-id must be non-empty and hold no '.'")
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(sign(key, msg_id, timestamp, body) for key in keys),
    }


def verify(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_seconds: int = TOLERANCE_SECONDS,
) -> tuple[str, int]:
    """``(webhook-id, timestamp)`` of a delivery signed by one of ``keys`` within the
    tolerance; ``VerificationError`` otherwise. ``headers`` has lower-case names."""
    msg_id = headers.get(ID_HEADER, "")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    signatures = headers.get(SIGNATURE_HEADER, "")
    if not (msg_id and stamp and signatures):
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not stamp.isascii() or not stamp.isdigit():
        raise VerificationError("webhook-timestamp is not integer Unix seconds")
    timestamp = int(stamp)
    if timestamp < now - tolerance_seconds:
        raise VerificationError("webhook-timestamp too old")
    if timestamp > now + tolerance_seconds:
        raise VerificationError("webhook-timestamp too new")
    expected = [_digest(key, msg_id, timestamp, body) for key in keys]
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version != SIGNATURE_VERSION:
            continue  # v1a (asymmetric) or a future scheme: not ours to check
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every comparison runs (no early exit on the keys): constant time per signature.
        if any([hmac.compare_digest(given, digest) for digest in expected]):
            return msg_id, timestamp
    raise VerificationError("no matching signature")
