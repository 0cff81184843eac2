"""Unsubscribe and GPC tokens: authenticated encryption with a rotating key ring.

A token is ``KID.BODY`` where ``BODY`` is base64url(nonce ‖ AES-256-GCM ciphertext ‖ tag)
of a compact JSON payload naming the recipient (customer id and/or email), the scopes,
an optional postal address and jurisdiction, the purpose and an optional expiry. The key
id and format version are bound as associated data, so nothing in a token can be
changed without the tag failing. Whoever holds the URL learns nothing but the key id.

Keys rotate by adding a new kid and making it current: new links use it, links minted
under older kids keep verifying for as long as those keys stay in the ring.

Pure: no I/O; the clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import combinations
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.contract import Scope
from services.common.errors import ConfigurationError, PoisonMessage
from services.common.records import PostalAddressRecord
from services.common.settings import Settings
from services.domain.identity import check_text, normalize_email
from services.domain.validation import normalize_postal_address

FORMAT_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_TOKEN_CHARS = 2048
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")
DEV_KEY = b"optout-dev-only-key-NOT-SECRET!!"

# Deterministic event ids: same token + same content -> same OptOutRequested event_id.
EVENT_NAMESPACE = uuid.UUID("3b0c7f6e-8f52-4d8e-a1c4-5e2f9d7b6a10")

_SCOPE_CODES = {
    Scope.EMAIL_MARKETING: "E",
    Scope.POSTAL_MARKETING: "P",
    Scope.THIRD_PARTY_SHARING: "T",
    Scope.ALL: "A",
}
_CODE_SCOPES = {code: scope for scope, code in _SCOPE_CODES.items()}


class Purpose(StrEnum):
    UNSUBSCRIBE = "u"  # List-Unsubscribe / footer links
    GPC = "g"  # signed customer token for the Global Privacy Control endpoint


class TokenError(Exception):
    """A token that must be refused. ``reason``: malformed, unknown_key, forged, expired,
    wrong_purpose."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    """What a token says. ``expires_at`` None: never expires."""

    purpose: Purpose
    scopes: tuple[Scope, ...]
    customer_id: str | None = None
    email: str | None = None
    postal_address: PostalAddressRecord | None = field(default=None, compare=False)
    jurisdiction: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class VerifiedToken:
    token_id: str  # "KID.NONCE": stable, unique per minted token, not secret
    kid: str
    claims: Claims


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    if not _B64.match(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> str:
    """A fresh random AES-256 key, base64url, for ``OPTOUT_WEB_TOKEN_KEYS``."""
    return b64encode(os.urandom(KEY_BYTES))


class KeyRing:
    """Keys by id; ``current`` mints, every key verifies."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if not keys:
            raise ConfigurationError("OPTOUT_WEB_TOKEN_KEYS holds no key")
        for kid, key in keys.items():
            if not _KID.match(kid):
                raise ConfigurationError(f"token key id {kid!r} must match [A-Za-z0-9_-]{{1,32}}")
            if len(key) != KEY_BYTES:
                raise ConfigurationError(f"token key {kid!r} must be {KEY_BYTES} bytes (base64url)")
        if current not in keys:
            raise ConfigurationError(f"OPTOUT_WEB_CURRENT_KID {current!r} is not in OPTOUT_WEB_TOKEN_KEYS")
        self.current = current
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._dev_kids = frozenset(kid for kid, key in keys.items() if key == DEV_KEY)

    @property
    def kids(self) -> list[str]:
        return sorted(self._ciphers)

    @property
    def uses_dev_key(self) -> bool:
        return bool(self._dev_kids)

    def cipher(self, kid: str) -> AESGCM | None:
        return self._ciphers.get(kid)


def parse_keys(raw: str) -> dict[str, bytes]:
    """``{"kid": "base64url key"}`` -> ``{kid: bytes}``; ``ConfigurationError`` if malformed."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigurationError("OPTOUT_WEB_TOKEN_KEYS is not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigurationError('OPTOUT_WEB_TOKEN_KEYS must be a JSON object {"kid": "key"}')
    keys: dict[str, bytes] = {}
    for kid, text in value.items():
        try:
            keys[str(kid)] = b64decode(str(text))
        except (ValueError, binascii.Error):
            raise ConfigurationError(f"token key {kid!r} is not base64url") from None
    return keys


def keyring_from_settings(settings: Settings) -> KeyRing:
    """The configured key ring; refuses the well-known dev key when ``OPTOUT_ENV=production``."""
    ring = KeyRing(parse_keys(settings.web_token_keys.get_secret_value()), settings.web_current_kid)
    if ring.uses_dev_key and settings.env.lower() == "production":
        raise ConfigurationError(
            "OPTOUT_WEB_TOKEN_KEYS contains the dev-only key while OPTOUT_ENV=production; "
            "generate one with 'optout link --generate-key'"
        )
    return ring


def make_claims(
    purpose: Purpose,
    scopes: Iterable[Scope | str],
    *,
    customer_id: str | None = None,
    email: str | None = None,
    postal_address: dict[str, Any] | None = None,
    jurisdiction: str | None = None,
    expires_at: datetime | None = None,
) -> Claims:
    """Normalized claims; ``PoisonMessage``/``ValueError`` for what intake would refuse."""
    cust = check_text("customer_id", customer_id.strip(), 200) if customer_id else None
    mail = normalize_email(email) if email else None
    if not (cust or mail):
        raise PoisonMessage("no_identifier", "a link needs a customer id or an email address")
    if purpose is Purpose.GPC and not cust:
        raise PoisonMessage("no_identifier", "a GPC token needs a customer id")
    wanted = tuple(sorted({Scope(str(s).strip().upper()) for s in scopes}))
    if not wanted:
        raise PoisonMessage("empty_scopes", "scopes is empty")
    if purpose is Purpose.GPC:
        wanted = (Scope.THIRD_PARTY_SHARING,)
    juris = check_text("jurisdiction", jurisdiction.strip(), 20).upper() if jurisdiction else None
    return Claims(
        purpose=purpose,
        scopes=wanted,
        customer_id=cust,
        email=mail,
        postal_address=normalize_postal_address(postal_address),
        jurisdiction=juris or None,
        expires_at=expires_at,
    )


def _payload(claims: Claims) -> bytes:
    body: dict[str, Any] = {"p": claims.purpose.value, "s": "".join(_SCOPE_CODES[s] for s in claims.scopes)}
    if claims.customer_id:
        body["c"] = claims.customer_id
    if claims.email:
        body["e"] = claims.email
    if claims.postal_address:
        body["a"] = claims.postal_address
    if claims.jurisdiction:
        body["j"] = claims.jurisdiction
    if claims.expires_at is not None:
        body["x"] = int(claims.expires_at.timestamp())
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _claims(payload: bytes) -> Claims:
    body = json.loads(payload)
    expires = body.get("x")
    return Claims(
        purpose=Purpose(body["p"]),
        scopes=tuple(sorted({_CODE_SCOPES[c] for c in body["s"]})),
        customer_id=body.get("c"),
        email=body.get("e"),
        postal_address=body.get("a"),
        jurisdiction=body.get("j"),
        expires_at=datetime.fromtimestamp(expires, tz=UTC) if expires is not None else None,
    )


def _aad(kid: str) -> bytes:
    return f"optout-token/{FORMAT_VERSION}/{kid}".encode("ascii")


def mint(ring: KeyRing, claims: Claims, nonce: bytes | None = None) -> str:
    """Encrypt ``claims`` under the current key. ``nonce`` only for tests."""
    kid = ring.current
    cipher = ring.cipher(kid)
    assert cipher is not None  # KeyRing guarantees the current kid exists
    iv = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    sealed = cipher.encrypt(iv, _payload(claims), _aad(kid))
    return f"{kid}.{b64encode(iv + sealed)}"


def verify(ring: KeyRing, token: str, now: datetime, purpose: Purpose) -> VerifiedToken:
    """Decrypt and check a token; raise ``TokenError`` with the reason it is refused."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise TokenError("malformed")
    kid, _, body = token.partition(".")
    if not _KID.match(kid):
        raise TokenError("malformed")
    try:
        raw = b64decode(body)
    except (ValueError, binascii.Error):
        raise TokenError("malformed") from None
    if len(raw) < NONCE_BYTES + 16 + 2:
        raise TokenError("malformed")
    cipher = ring.cipher(kid)
    if cipher is None:
        raise TokenError("unknown_key")
    nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    try:
        payload = cipher.decrypt(nonce, sealed, _aad(kid))
    except InvalidTag:
        raise TokenError("forged") from None
    try:
        claims = _claims(payload)
    except (ValueError, KeyError, TypeError):
        # Authentic but unreadable: minted by a newer, incompatible version.
        raise TokenError("malformed") from None
    if claims.purpose is not purpose:
        raise TokenError("wrong_purpose")
    if claims.expires_at is not None and now >= claims.expires_at:
        raise TokenError("expired")
    return VerifiedToken(token_id=f"{kid}.{b64encode(nonce)}", kid=kid, claims=claims)


def expiry(now: datetime, ttl_days: int) -> datetime | None:
    return now + timedelta(days=ttl_days) if ttl_days > 0 else None


def request_event_id(
    token: VerifiedToken, scopes: Iterable[Scope], typed_address: Mapping[str, Any] | None = None
) -> str:
    """The event_id of a request made through ``token`` for ``scopes`` (order-insensitive),
    with ``typed_address``: a normalized postal address the person typed on the page.

    The event id covers everything intake's content hash covers: the token fixes the
    identifiers and jurisdiction, the arguments the rest. Posting the same choice twice
    gives the same id, so the pipeline records it once; a different choice or a corrected
    address is a different request (never the same id with other content, which intake
    would dead-letter)."""
    codes = "".join(sorted(_SCOPE_CODES[s] for s in set(scopes)))
    name = f"{token.token_id}|{codes}"
    if typed_address is not None:
        name += "|" + _digest(typed_address)
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


def _digest(value: Mapping[str, Any]) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def candidate_event_ids(token: VerifiedToken) -> list[str]:
    """Every event id a request through ``token`` without a typed address can have (one per
    non-empty scope set). Requests with a typed address are found by their reference."""
    scopes = list(Scope)
    return [
        request_event_id(token, combo)
        for size in range(1, len(scopes) + 1)
        for combo in combinations(scopes, size)
    ]


def gpc_event_id(customer_id: str, jurisdiction: str | None = None) -> str:
    """One GPC opt-out per customer and jurisdiction, however many signals arrive (a token
    naming another jurisdiction is other content, so it gets its own id)."""
    name = f"gpc|{customer_id}" if jurisdiction is None else f"gpc|{customer_id}|{jurisdiction}"
    return str(uuid.uuid5(EVENT_NAMESPACE, name))
