"""Suppression-list entries: which identifiers of a request are kept, and how each is sealed.

An entry is keyed by its kind and the SHA-256 of the normalized identifier (the same hashes
the commands carry as ``email_sha256``/``phone_sha256``; for a postal address, the SHA-256
of ``services.domain.validation.postal_key``). Its value is sealed with AES-256-GCM under the
current key of ``OPTOUT_SUPPRESSION_KEYS``; the associated data names the kind and the hash,
so a value cannot be moved to another row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.common.errors import ConfigurationError
from services.common.sealing import NONCE_BYTES, KeyRing, parse_keys
from services.common.settings import DEV_SUPPRESSION_KEY, Settings
from services.domain.identity import sha256_hex
from services.domain.validation import OptOutRequest, postal_key

KEYS_SETTING = "OPTOUT_SUPPRESSION_KEYS"
CURRENT_KID_SETTING = "OPTOUT_SUPPRESSION_CURRENT_KID"
FORMAT_VERSION = 1


class Kind(StrEnum):
    EMAIL = "email"  # normalized (trimmed, lower-cased) address
    PHONE = "phone"  # E.164
    POSTAL = "postal"  # the normalized address as compact JSON


@dataclass(frozen=True)
class Entry:
    """One identifier of a request, in the clear (only in memory)."""

    kind: Kind
    sha256: str
    value: str


def suppression_ring(settings: Settings) -> KeyRing:
    """The configured key ring; refuses the well-known dev key when ``OPTOUT_ENV=production``."""
    ring = KeyRing(
        parse_keys(settings.suppression_keys.get_secret_value(), KEYS_SETTING),
        settings.suppression_current_kid,
        setting=KEYS_SETTING,
        current_setting=CURRENT_KID_SETTING,
        dev_key=DEV_SUPPRESSION_KEY,
    )
    if ring.uses_dev_key and settings.env.lower() == "production":
        raise ConfigurationError(
            f"{KEYS_SETTING} contains the dev-only key while OPTOUT_ENV=production; "
            "generate one with 'optout suppression-list generate-key'"
        )
    return ring


def context(kind: Kind | str, sha256: str) -> bytes:
    """Associated data of an entry's value (the key id is appended by the primitive)."""
    return f"optout-suppression/{FORMAT_VERSION}/{kind}/{sha256}/".encode()


def postal_sha256(address: Mapping[str, Any] | None) -> str | None:
    key = postal_key(address)
    return sha256_hex(key) if key is not None else None


def entries_of(request: OptOutRequest) -> list[Entry]:
    """The identifiers of ``request`` the suppression list keeps (none for a customer id
    alone: it is not a contact detail and stays on the request)."""
    # The request's own identifiers with the hashes validation already computed.
    found: list[Entry] = []
    if request.email:
        found.append(Entry(Kind.EMAIL, request.email_sha256 or sha256_hex(request.email), request.email))
    if request.phone:
        found.append(Entry(Kind.PHONE, request.phone_sha256 or sha256_hex(request.phone), request.phone))
    if request.postal_address is not None and request.postal_sha256 is not None:
        found.append(Entry(Kind.POSTAL, request.postal_sha256, _postal_value(request.postal_address)))
    added = request.enrichment  # what the customer directory added (services/intake/enrich.py)
    if added:
        for email in added.emails:
            found += identifier_entries(email, None, None)
        for phone in added.phones:
            found += identifier_entries(None, phone, None)
        for address in added.postal_addresses:
            found += identifier_entries(None, None, address)
    return found


def identifier_entries(
    email: str | None, phone: str | None, postal_address: Mapping[str, Any] | None
) -> list[Entry]:
    """Entries of already normalized identifiers (email, E.164 phone, normalized address)."""
    found: list[Entry] = []
    if email:
        found.append(Entry(Kind.EMAIL, sha256_hex(email), email))
    if phone:
        found.append(Entry(Kind.PHONE, sha256_hex(phone), phone))
    digest = postal_sha256(postal_address)
    if postal_address is not None and digest is not None:
        found.append(Entry(Kind.POSTAL, digest, _postal_value(postal_address)))
    return found


def _postal_value(postal_address: Mapping[str, Any]) -> str:
    return json.dumps(postal_address, separators=(",", ":"), ensure_ascii=False)


def seal(ring: KeyRing, entry: Entry, nonce: bytes | None = None) -> str:
    """``nonce``: a fresh random one from ``os.urandom`` (``nonces``), or None to draw one."""
    return ring.seal(entry.value.encode("utf-8"), context(entry.kind, entry.sha256), nonce)


def nonces(count: int) -> list[bytes]:
    """``count`` random AES-GCM nonces drawn from ``os.urandom`` in one call (one system call
    per chunk of entries instead of one per entry; as random as drawing each alone)."""
    pool = os.urandom(NONCE_BYTES * count)
    return [pool[i : i + NONCE_BYTES] for i in range(0, NONCE_BYTES * count, NONCE_BYTES)]


def open_value(ring: KeyRing, kind: Kind | str, sha256: str, sealed: str) -> str:
    """The identifier in a sealed value; ``SealError`` if it does not belong to this row."""
    return ring.open(sealed, context(kind, sha256))[2].decode("utf-8")
