"""The replayed commands' bytes without the general codec: command ids and Avro bodies built
from parts computed once per run (or per batch). Pure (no I/O).

A replayed command has a fixed shape: its ``request_id`` and ``destination`` are the same
for the whole run, its ``issued_at``/``deadline`` for the whole batch, ``action`` is always
OPT_OUT and ``device_id`` always null. ``CommandEncoder`` writes that shape as Avro single-object
encoding by concatenating precomputed byte strings; tests/unit/test_replay_encode.py proves
its output byte-identical to ``Codec.encode("SuppressionCommand", record)``. A command with a
postal address goes through ``Codec.encode`` (the nested record is rare and not worth a
second writer). The writer reads the field order and enum symbols from the codec's newest
``SuppressionCommand`` schema and refuses a schema whose fields it does not know, so a new
schema version cannot be written wrongly: it fails loudly until this file learns it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from services.common.avro import MARKER, Codec
from services.common.clock import from_millis, to_millis
from services.common.contract import Action, Destination, Identifier
from services.common.records import PostalAddressRecord, SuppressionCommandRecord
from services.domain.planning import COMMAND_NAMESPACE
from services.replay.plan import SubjectKind, Suppressed, replay_command, request_id_of

SCHEMA = "SuppressionCommand"
FIELDS = (
    "command_id",
    "request_id",
    "destination",
    "customer_id",
    "email",
    "phone",
    "postal_address",
    "email_sha256",
    "phone_sha256",
    "scopes",
    "issued_at",
    "deadline",
    "action",
    "requested_at",
    "device_id",
)
NULL = b"\x00"  # union branch 0 (null)
_STRING_BRANCH = b"\x02"  # union branch 1 (string), zigzag


def write_long(value: int) -> bytes:
    """Avro ``long``/``int``: zigzag, then base-128 varint, low group first."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_LENGTHS = [write_long(n) for n in range(1024)]


def write_string(value: str) -> bytes:
    data = value.encode("utf-8")
    n = len(data)
    return (_SMALL_LENGTHS[n] if n < 1024 else write_long(n)) + data


def _enum_symbols(field_type: Any) -> list[str]:
    if not isinstance(field_type, dict) or field_type.get("type") != "enum":
        raise ValueError(f"{SCHEMA}: expected an enum, got {field_type!r}")
    return [str(s) for s in field_type["symbols"]]


class CommandEncoder:
    """``SuppressionCommand`` bytes of replayed commands (one ``request_id`` and
    ``destination``; ``issued_at``/``deadline`` set per batch with ``at``)."""

    def __init__(self, codec: Codec, request_id: str, destination: str, action: str) -> None:
        schema = codec.latest(SCHEMA)
        fields = schema.parsed["fields"]
        names = tuple(str(f["name"]) for f in fields)
        if names != FIELDS:
            raise ValueError(
                f"{SCHEMA} v{schema.version} has fields {names}; the replay encoder knows {FIELDS}"
            )
        by_name = {str(f["name"]): f["type"] for f in fields}
        scopes_type = by_name["scopes"]
        if not isinstance(scopes_type, dict) or scopes_type.get("type") != "array":
            raise ValueError(f"{SCHEMA}: scopes is not an array")
        self._scope_index = {s: i for i, s in enumerate(_enum_symbols(scopes_type["items"]))}
        action_index = _enum_symbols(by_name["action"]).index(action)
        self.codec = codec
        self.request_id = request_id
        self.destination = destination
        self.action = action
        self.head = MARKER + schema.fingerprint
        self.fixed = write_string(request_id) + write_string(destination)
        self._action = write_long(action_index)
        self.scope_cache: dict[tuple[str, ...], bytes] = {}  # ``scopes`` by value
        self.times = b""  # issued_at, deadline and action (``at``)
        self.issued_at = 0

    def at(self, issued_at: int) -> None:
        """``issued_at`` (and ``deadline``: replayed commands have no legal deadline) in
        epoch milliseconds for the commands encoded next."""
        self.issued_at = issued_at
        self.times = write_long(issued_at) * 2 + self._action

    def scopes(self, scopes: Sequence[str]) -> bytes:
        """The ``scopes`` array's bytes (cached by its value)."""
        key = tuple(scopes)
        found = self.scope_cache.get(key)
        if found is None:
            if key:
                found = write_long(len(key)) + b"".join(write_long(self._scope_index[s]) for s in key) + NULL
            else:
                found = NULL
            self.scope_cache[key] = found
        return found

    def encode(
        self,
        command_id: str,
        customer_id: str | None,
        email: str | None,
        phone: str | None,
        email_sha256: str | None,
        phone_sha256: str | None,
        scopes: Sequence[str],
        requested_at: int,
    ) -> bytes:
        """A command without a postal address (``encode_record`` takes any)."""
        string = write_string
        return b"".join(
            (
                self.head,
                string(command_id),
                self.fixed,
                NULL if customer_id is None else _STRING_BRANCH + string(customer_id),
                NULL if email is None else _STRING_BRANCH + string(email),
                NULL if phone is None else _STRING_BRANCH + string(phone),
                NULL,  # postal_address
                NULL if email_sha256 is None else _STRING_BRANCH + string(email_sha256),
                NULL if phone_sha256 is None else _STRING_BRANCH + string(phone_sha256),
                self.scopes(scopes),
                self.times,
                write_long(requested_at),
                NULL,  # device_id
            )
        )

    def encode_record(self, record: SuppressionCommandRecord) -> bytes:
        """Any replayed command: the fast path when it fits the fixed shape, else the codec."""
        if (
            record["postal_address"] is not None
            or record["device_id"] is not None
            or record["request_id"] != self.request_id
            or record["destination"] != self.destination
            or record["action"] != self.action
            or record["issued_at"] != self.issued_at
            or record["deadline"] != self.issued_at
            or not isinstance(record["requested_at"], int)
            or not isinstance(record["issued_at"], int)
        ):
            return self.codec.encode(SCHEMA, record)
        return self.encode(
            record["command_id"],
            record["customer_id"],
            record["email"],
            record["phone"],
            record["email_sha256"],
            record["phone_sha256"],
            record["scopes"],
            record["requested_at"],
        )


class CommandIds:
    """``planning.command_id(request_id, f"{destination}\\x1f{subject}")`` with the SHA-1 of the
    fixed prefix computed once (``plan.replay_command_id`` is the reference)."""

    def __init__(self, request_id: str, destination: str) -> None:
        self.prefix = COMMAND_NAMESPACE.bytes + f"{request_id}\x1f{destination}\x1f".encode()
        self._base = hashlib.sha1(self.prefix)

    def __call__(self, subject: str) -> str:
        h = self._base.copy()
        h.update(subject.encode())
        x = h.hexdigest()
        variant = "89ab"[int(x[16], 16) & 3]
        return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{variant}{x[17:20]}-{x[20:32]}"


class ReplayBuilder:
    """The (command id, bytes) of each replayed subject for one run and destination: what
    ``Codec.encode(plan.replay_command(...))`` gives, without building the record."""

    def __init__(self, codec: Codec, replay_id: str, dest: Destination) -> None:
        request_id = request_id_of(replay_id)
        self.replay_id = replay_id
        self.dest = dest
        self.ids = CommandIds(request_id, dest.id)
        self.encoder = CommandEncoder(codec, request_id, dest.id, Action.OPT_OUT.value)
        has, needs = dest.identifiers, dest.requires_one_of
        self._customer = Identifier.CUSTOMER_ID in has
        self._email_hash = Identifier.EMAIL_SHA256 in has
        self._email_raw = Identifier.EMAIL in has
        self._phone_hash = Identifier.PHONE_SHA256 in has
        self._phone_raw = Identifier.PHONE in has
        self._needs = needs
        self._issued_at = datetime.fromtimestamp(0, UTC)

    def at(self, issued_at: datetime) -> None:
        """The moment the next commands are issued (``issued_at`` and ``deadline``)."""
        self._issued_at = issued_at
        self.encoder.at(to_millis(issued_at))

    def build(
        self, subject: str, scopes: Sequence[str], since: int, raw: str | PostalAddressRecord | None
    ) -> tuple[str, bytes] | None:
        """``subject``'s command id and bytes, or None when the destination cannot act on it
        (``since``: the newest time it was suppressed, in epoch milliseconds, the command's
        ``requested_at``; ``raw``: its decrypted value, when ``plan.sealed_kind`` asked for
        one)."""
        kind, _, value = subject.partition(":")
        needs = self._needs
        customer = email = phone = email_sha256 = phone_sha256 = None
        if kind == SubjectKind.EMAIL:
            if self._email_hash:
                email_sha256 = value
            if self._email_raw and isinstance(raw, str):
                email = raw
            if not (
                (email_sha256 is not None and Identifier.EMAIL_SHA256 in needs)
                or (email is not None and Identifier.EMAIL in needs)
            ):
                return None
        elif kind == SubjectKind.CUSTOMER:
            if not (self._customer and Identifier.CUSTOMER_ID in needs):
                return None
            customer = value
        elif kind == SubjectKind.PHONE:
            if self._phone_hash:
                phone_sha256 = value
            if self._phone_raw and isinstance(raw, str):
                phone = raw
            if not (
                (phone_sha256 is not None and Identifier.PHONE_SHA256 in needs)
                or (phone is not None and Identifier.PHONE in needs)
            ):
                return None
        else:  # a postal address (the codec writes the nested record) or nothing usable
            record = replay_command(
                self.replay_id,
                self.dest,
                Suppressed(subject, tuple(scopes), from_millis(since)),
                raw,
                self._issued_at,
            )
            if record is None:
                return None
            record["requested_at"] = since  # exactly (a datetime may not convert back to it)
            return record["command_id"], self.encoder.encode_record(record)
        command_id = self.ids(subject)
        body = self.encoder.encode(
            command_id, customer, email, phone, email_sha256, phone_sha256, scopes, since
        )
        return command_id, body
