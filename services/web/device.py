"""The pseudonymous first-party device id of a browser that sends ``Sec-GPC: 1`` without a
token, and what is derived from it. Pure: no I/O (randomness is passed in for tests).

CCPA regulations §7025(c)(1) (Cal. Code Regs. tit. 11, § 7025): the signal is a valid
opt-out of sale/sharing "for that browser or device and any consumer profile associated
with that browser or device, including pseudonymous profiles". A browser we know nothing
about gets a random id in a first-party cookie, and the opt-out is recorded for that id
(``device_id`` of contract version 2). The id is random (192 bits), so it names no one
and cannot be guessed; the signal log keeps only its SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie

from services.web.tokens import EVENT_NAMESPACE

COOKIE_NAME = "optout_device"
# With Secure, the ``__Host-`` prefix (RFC 6265bis): the browser accepts the cookie only
# from a secure origin, with Path=/ and no Domain, so no subdomain can plant or read it.
SECURE_COOKIE_NAME = "__Host-optout_device"
DEVICE_ID_BYTES = 24
# token_urlsafe(24): 32 characters of [A-Za-z0-9_-], allowed by intake's device_id check.
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")


def cookie_name(secure: bool) -> str:
    return SECURE_COOKIE_NAME if secure else COOKIE_NAME


def new_device_id(token_bytes: Callable[[int], str] = secrets.token_urlsafe) -> str:
    """A fresh random device id (32 URL-safe characters)."""
    value = token_bytes(DEVICE_ID_BYTES)
    if not is_device_id(value):
        raise ValueError("the random source gave an id of the wrong shape")
    return value


def is_device_id(value: str | None) -> bool:
    return value is not None and _DEVICE_ID.match(value) is not None


def device_from_cookies(header: str, secure: bool) -> str | None:
    """The device id in a ``Cookie`` header, or None when absent or not one of ours (a
    malformed or tampered value is ignored: the browser gets a new id)."""
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(cookie_name(secure))
    value = morsel.value if morsel is not None else None
    return value if is_device_id(value) else None


def set_cookie_header(device_id: str, secure: bool, max_age_days: int) -> str:
    """The ``Set-Cookie`` value: first-party, HttpOnly, SameSite=Lax, long-lived."""
    if not is_device_id(device_id):
        raise ValueError("not a device id")
    parts = [
        f"{cookie_name(secure)}={device_id}",
        "Path=/",
        f"Max-Age={max_age_days * 86400}",
        "HttpOnly",
        "SameSite=Lax",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def device_event_id(device_id: str) -> str:
    """One GPC opt-out per device, however many signals arrive (the same request again)."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"gpc-device|{device_id}"))


def subject_sha256(kind: str, value: str) -> str:
    """What the signal log keeps of a device or customer: SHA-256 of ``kind:value``. A
    regulator's question about one customer is answered by hashing their id the same way."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


_FAMILIES = (
    ("edg/", "Edge"),
    ("opr/", "Opera"),
    ("samsungbrowser/", "Samsung Internet"),
    ("firefox/", "Firefox"),
    ("fxios/", "Firefox"),
    ("brave", "Brave"),
    ("duckduckgo/", "DuckDuckGo"),
    ("chromium/", "Chromium"),
    ("headlesschrome/", "Chromium"),
    ("chrome/", "Chrome"),
    ("crios/", "Chrome"),
    ("safari/", "Safari"),
    ("curl/", "curl"),
    ("python-", "script"),
)


def user_agent_family(user_agent: str) -> str:
    """A coarse browser family (no version, no platform): enough to see which browsers
    send the signal, too little to single anyone out."""
    lowered = user_agent.lower()
    for needle, family in _FAMILIES:
        if needle in lowered:
            return family
    return "other" if lowered else "none"
