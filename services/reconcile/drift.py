"""What a destination lacks and what it has that we never sent. Pure: no I/O.

Both sides are compared as SHA-256 hex digests of the normalized identifier (the hashes of
``suppression_state`` subjects ``email_sha256:<hex>`` / ``phone_sha256:<hex>`` /
``postal:<hex>``): what the destination returns is normalized with
``services.domain.identity`` and hashed first; a mail house's export row is turned back into
the address key (``services.connectors.mail_house_export``).

A missing entry is re-issued as a SuppressionCommand whose ids are deterministic: request id
``reconcile:<destination>:<hash>:<generation>`` and a command id derived from it, where the
generation is how many re-issues of that entry the destination already acknowledged. So a
re-run before the connector applied the command produces the same ids (the connector's
dedupe store applies it once), and an entry that disappears again after a successful
re-issue gets a new generation (a new command, really applied again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.common.contract import RECONCILE_REQUEST_PREFIX, Identifier
from services.common.errors import PoisonMessage
from services.connectors.mail_house_export import postal_sha256_of_key
from services.domain.identity import normalize_email, normalize_phone, sha256_hex
from services.domain.planning import command_id

# Our state's requested_at plus this (the wire's resolution is the millisecond): the re-issued
# command ranks just after the request that suppressed the person (so the connector's
# newest-wins check applies it) and before any later request of the person (a newer opt-in is
# never undone by a re-issue).
RANK_STEP = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Expected:
    """One person suppressed in our state for some of the destination's scopes."""

    sha256: str
    scopes: tuple[str, ...]
    since: datetime  # the newest winning request's requested_at among those scopes
    event_id: str | None = None  # that request (suppression_state.event_id)


@dataclass
class Drift:
    """The comparison of one destination's list with our state."""

    expected: int
    present: int
    missing: list[Expected] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # hashes at the destination only
    unreadable: int = 0  # entries the destination returned that do not normalize


def hash_of(identifier: Identifier, raw: str) -> str | None:
    """SHA-256 of the normalized ``raw`` (an email or phone as the provider returned it, a
    mail house's file-form address key); None when it does not normalize (counted, never
    guessed)."""
    if identifier is Identifier.POSTAL_ADDRESS:
        return postal_sha256_of_key(raw)
    try:
        value = normalize_email(raw) if identifier is Identifier.EMAIL else normalize_phone(raw)
    except PoisonMessage:
        return None
    return sha256_hex(value)


def compare(expected: Mapping[str, Expected], returned: Iterable[str], identifier: Identifier) -> Drift:
    """``expected`` by hash; ``returned``: the raw identifiers the destination listed."""
    present: set[str] = set()
    unreadable = 0
    for raw in returned:
        digest = hash_of(identifier, raw)
        if digest is None:
            unreadable += 1
        else:
            present.add(digest)
    return Drift(
        expected=len(expected),
        present=len(present),
        missing=[expected[h] for h in sorted(expected.keys() - present)],
        unknown=sorted(present - expected.keys()),
        unreadable=unreadable,
    )


def match_file_forms(drift: Drift, forms: Mapping[str, str], returned: Iterable[str]) -> Drift:
    """Mail houses: a missing address (by hash) whose file form (``forms``: hash -> the key
    ``mail_house_export.key_of_address`` gives for our value) is among the ``returned`` keys is
    present after all (its key did not survive our files' upper-casing or line folding); the
    returned row it matched is then not unknown either."""
    keys = set(returned)
    found = {sha: form for sha, form in forms.items() if form in keys}
    if not found:
        return drift
    matched = {postal_sha256_of_key(form) for form in found.values()}
    return Drift(
        expected=drift.expected,
        present=drift.present,
        missing=[m for m in drift.missing if m.sha256 not in found],
        unknown=[u for u in drift.unknown if u not in matched],
        unreadable=drift.unreadable,
    )


def reissue_request_id(destination: str, sha256: str, generation: int) -> str:
    return f"{RECONCILE_REQUEST_PREFIX}{destination}:{sha256}:{generation}"


def reissue_prefix(destination: str, sha256: str) -> str:
    return f"{RECONCILE_REQUEST_PREFIX}{destination}:{sha256}:"


def reissue_ids(destination: str, sha256: str, generation: int) -> tuple[str, str]:
    """(request id, command id) of a re-issue; the same inputs always give the same ids."""
    request_id = reissue_request_id(destination, sha256, generation)
    return request_id, command_id(request_id, destination)
