"""Authenticated encryption with a rotating key ring: the one AES-256-GCM primitive.

Both the web tokens (``services/web/tokens.py``) and the encrypted suppression list
(``services/suppression``) seal values with it. A sealed value is ``KID.BODY``, where
``BODY`` is base64url(nonce ‖ ciphertext ‖ tag): the key id travels inside every value,
so keys rotate without downtime (a new current kid seals, every kid in the ring opens).

The associated data of every seal is the caller's ``context`` followed by the key id: a
value cannot be moved to another context (another database row, another token format)
or relabelled with another kid, even one holding the same key material.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import ConfigurationError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")
_URLSAFE = bytes.maketrans(b"-_", b"+/")  # base64url to base64 (``open_many``)
_PADDING = ("", "===", "==", "=")


class SealError(Exception):
    """A sealed value that cannot be opened. ``reason``: malformed, unknown_key, forged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    if not _B64.match(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> str:
    """A fresh random AES-256 key, base64url (for a ``{"kid": "key"}`` key setting)."""
    return b64encode(os.urandom(KEY_BYTES))


def parse_keys(raw: str, setting: str) -> dict[str, bytes]:
    """``{"kid": "base64url key"}`` -> ``{kid: bytes}``; ``ConfigurationError`` naming
    ``setting`` (e.g. ``OPTOUT_WEB_TOKEN_KEYS``) if malformed."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigurationError(f"{setting} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f'{setting} must be a JSON object {{"kid": "key"}}')
    keys: dict[str, bytes] = {}
    for kid, text in value.items():
        try:
            keys[str(kid)] = b64decode(str(text))
        except (ValueError, binascii.Error):
            raise ConfigurationError(f"{setting}: key {kid!r} is not base64url") from None
    return keys


class KeyRing:
    """AES-256-GCM keys by id: ``current`` seals, every key opens.

    ``setting`` and ``current_setting`` name the settings the keys come from, for error
    messages; ``dev_key`` is a well-known development key whose presence
    ``uses_dev_key`` reports (callers refuse it in production)."""

    def __init__(
        self,
        keys: Mapping[str, bytes],
        current: str,
        *,
        setting: str = "key ring",
        current_setting: str = "current key id",
        dev_key: bytes | None = None,
    ) -> None:
        if not keys:
            raise ConfigurationError(f"{setting} holds no key")
        for kid, key in keys.items():
            if not KID_PATTERN.match(kid):
                raise ConfigurationError(f"{setting}: key id {kid!r} must match [A-Za-z0-9_-]{{1,32}}")
            if len(key) != KEY_BYTES:
                raise ConfigurationError(f"{setting}: key {kid!r} must be {KEY_BYTES} bytes (base64url)")
        if current not in keys:
            raise ConfigurationError(f"{current_setting} {current!r} is not in {setting}")
        self.current = current
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._keys = dict(keys)
        self._dev_kids = frozenset(kid for kid, key in keys.items() if dev_key is not None and key == dev_key)

    @property
    def kids(self) -> list[str]:
        return sorted(self._ciphers)

    def key_material(self) -> dict[str, bytes]:
        """The raw keys by id, for a compiled bulk opener that calls OpenSSL's AES-GCM itself
        (services/replay/_kernel.c: the same primitive, the same checks as ``open_many``)."""
        return dict(self._keys)

    @property
    def uses_dev_key(self) -> bool:
        return bool(self._dev_kids)

    def seal(self, plaintext: bytes, context: bytes, nonce: bytes | None = None) -> str:
        """``KID.BODY`` of ``plaintext`` under the current key, bound to ``context``.
        ``nonce``: drawn here from ``os.urandom`` when None; a caller passing one draws it
        from ``os.urandom`` too (``services.suppression.entries.nonces``) or is a test (a
        nonce must never repeat under one key)."""
        kid = self.current
        iv = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(iv, plaintext, context + kid.encode("ascii"))
        return f"{kid}.{b64encode(iv + sealed)}"

    def open(
        self, value: str, context: bytes, max_chars: int | None = None, min_plaintext: int = 0
    ) -> tuple[str, bytes, bytes]:
        """``(kid, nonce, plaintext)`` of a sealed value; ``SealError`` if it cannot be
        opened with ``context``. The nonce is unique per sealed value (not secret).
        Values longer than ``max_chars`` or too short to hold ``min_plaintext`` bytes are
        malformed."""
        if (max_chars is not None and len(value) > max_chars) or value.count(".") != 1:
            raise SealError("malformed")
        kid, _, body = value.partition(".")
        if not KID_PATTERN.match(kid):
            raise SealError("malformed")
        try:
            raw = b64decode(body)
        except (ValueError, binascii.Error):
            raise SealError("malformed") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES + min_plaintext:
            raise SealError("malformed")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SealError("unknown_key")
        nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
        try:
            plaintext = cipher.decrypt(nonce, sealed, context + kid.encode("ascii"))
        except InvalidTag:
            raise SealError("forged") from None
        return kid, nonce, plaintext

    def open_many(self, values: Sequence[str], contexts: Sequence[bytes]) -> list[bytes]:
        """The plaintexts of many sealed values (``values[i]`` bound to ``contexts[i]``), with
        the checks of ``open`` and its ``SealError`` on the first that cannot be opened; for
        bulk readers (``optout replay``), without ``open``'s per-call overhead."""
        ciphers = self._ciphers
        a2b = binascii.a2b_base64
        out: list[bytes] = []
        append = out.append
        for value, context in zip(values, contexts, strict=True):
            kid, _, body = value.partition(".")
            cipher = ciphers.get(kid)  # a kid of the ring matches KID_PATTERN
            if cipher is None or "." in body or not _B64.match(body):
                append(self.open(value, context)[2])  # raises the reason
                continue
            try:
                raw = a2b((body + _PADDING[len(body) % 4]).encode("ascii").translate(_URLSAFE))
            except (ValueError, binascii.Error):
                raise SealError("malformed") from None
            if len(raw) < NONCE_BYTES + TAG_BYTES:
                raise SealError("malformed")
            try:
                append(cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context + kid.encode("ascii")))
            except InvalidTag:
                raise SealError("forged") from None
        return out


def kid_of(value: str) -> str:
    """The key id a sealed value names (without opening it)."""
    return value.partition(".")[0]
