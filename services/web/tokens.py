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

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import combinations
from typing import Any

from services.common.contract import Scope
from services.common.errors import ConfigurationError, PoisonMessage
from services.common.records import PostalAddressRecord
from services.common.sealing import KeyRing as KeyRing  # re-exported for the web's callers
from services.common.sealing import SealError, b64encode
from services.common.sealing import b64decode as b64decode
from services.common.sealing import generate_key as generate_key
from services.common.sealing import parse_keys as parse_key_setting
from services.common.settings import Settings
from services.domain.identity import check_text, normalize_email
from services.domain.validation import normalize_postal_address

FORMAT_VERSION = 1
MAX_TOKEN_CHARS = 2048
KEYS_SETTING = "OPTOUT_WEB_TOKEN_KEYS"
CURRENT_KID_SETTING = "OPTOUT_WEB_CURRENT_KID"
DEV_KEY = b"optout-dev-only-key-NOT-SECRET!!"

# Deterministic event ids: same token + same content -> same OptOutRequested event_id.
EVENT_NAMESPACE = uuid.UUID("3b0c7f6e-8f52-4d8e-a1c4-5e2f9d7b6a10")

_SCOPE_CODES = {
    Scope.EMAIL_MARKETING: "E",
    Scope.POSTAL_MARKETING: "P",
    Scope.THIRD_PARTY_SHARING: "T",
    Scope.ALL: "A",
    Scope.SMS_MARKETING: "S",
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


def parse_keys(raw: str) -> dict[str, bytes]:
    """``OPTOUT_WEB_TOKEN_KEYS`` -> ``{kid: bytes}``; ``ConfigurationError`` if malformed."""
    return parse_key_setting(raw, KEYS_SETTING)


def token_ring(keys: dict[str, bytes], current: str) -> KeyRing:
    """A key ring for tokens (errors name the web settings; knows the dev key)."""
    return KeyRing(keys, current, setting=KEYS_SETTING, current_setting=CURRENT_KID_SETTING, dev_key=DEV_KEY)


def keyring_from_settings(settings: Settings) -> KeyRing:
    """The configured key ring; refuses the well-known dev key when ``OPTOUT_ENV=production``."""
    ring = token_ring(parse_keys(settings.web_token_keys.get_secret_value()), settings.web_current_kid)
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


# The associated data is this prefix followed by the key id (the sealing primitive appends it).
_CONTEXT = f"optout-token/{FORMAT_VERSION}/".encode("ascii")


def mint(ring: KeyRing, claims: Claims, nonce: bytes | None = None) -> str:
    """Encrypt ``claims`` under the current key. ``nonce`` only for tests."""
    return ring.seal(_payload(claims), _CONTEXT, nonce)


def verify(ring: KeyRing, token: str, now: datetime, purpose: Purpose) -> VerifiedToken:
    """Decrypt and check a token; raise ``TokenError`` with the reason it is refused."""
    try:
        kid, nonce, payload = ring.open(token, _CONTEXT, max_chars=MAX_TOKEN_CHARS, min_plaintext=2)
    except SealError as exc:
        raise TokenError(exc.reason) from None
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
    token: VerifiedToken,
    scopes: Iterable[Scope],
    typed_address: Mapping[str, Any] | None = None,
    round_: int = 0,
) -> str:
    """The event_id of a request made through ``token`` for ``scopes`` (order-insensitive),
    with ``typed_address``: a normalized postal address the person typed on the page.

    The event id covers everything intake's content hash covers: the token fixes the
    identifiers and jurisdiction, the arguments the rest. Posting the same choice twice
    gives the same id, so the pipeline records it once; a different choice or a corrected
    address is a different request (never the same id with other content, which intake
    would dead-letter).

    ``round_``: how many resubscribes (opt-ins) through this token were recorded before
    (``optin_event_id``). An opt-out after a resubscribe is a new request, so it must not
    reuse the id of the opt-out before it (intake would record it as that one again, and
    the opt-in would stand); round 0 is the id links always had."""
    codes = "".join(sorted(_SCOPE_CODES[s] for s in set(scopes)))
    name = f"{token.token_id}|{codes}"
    if typed_address is not None:
        name += "|" + _digest(typed_address)
    if round_:
        name += f"|r{round_}"
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


# Resubscribes through one link: after this many, the page offers none (contact us); the
# status page can enumerate every id a link's requests can have.
MAX_ROUNDS = 8


def optin_event_id(token: VerifiedToken, scopes: Iterable[Scope], round_: int = 0) -> str:
    """The event_id of a "resubscribe" (action OPT_IN) through ``token`` for ``scopes``:
    distinct from every opt-out id of the token (``request_event_id``), the same for the
    same choice posted twice. ``round_``: the resubscribes recorded before this one."""
    codes = "".join(sorted(_SCOPE_CODES[s] for s in set(scopes)))
    name = f"{token.token_id}|{codes}|OPT_IN"
    if round_:
        name += f"|r{round_}"
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


# What the resubscribe form can tick (the page's separate choices; see requests.CHOICES).
_RESUBSCRIBABLE = (Scope.EMAIL_MARKETING, Scope.POSTAL_MARKETING, Scope.THIRD_PARTY_SHARING)


def optin_event_ids(token: VerifiedToken) -> list[str]:
    """Every event id a resubscribe through ``token`` can have (every round)."""
    combos = [c for size in range(1, 4) for c in combinations(_RESUBSCRIBABLE, size)]
    return [optin_event_id(token, combo, round_) for round_ in range(MAX_ROUNDS) for combo in combos]


def token_event_ids(token: VerifiedToken) -> dict[str, str]:
    """Every event id a request through ``token`` without a typed address can have, opt-outs
    and resubscribes, every round: ``{event_id: "OPT_OUT" | "OPT_IN"}``."""
    scopes = list(Scope)
    combos = [combo for size in range(1, len(scopes) + 1) for combo in combinations(scopes, size)]
    ids = {
        request_event_id(token, combo, round_=round_): "OPT_OUT"
        for round_ in range(MAX_ROUNDS + 1)
        for combo in combos
    }
    ids.update(dict.fromkeys(optin_event_ids(token), "OPT_IN"))
    return ids
