"""Avro single-object encoding (Avro spec, "Single object encoding").

Every message on every topic is ``C3 01`` + the writer schema's 8-byte
CRC-64-AVRO fingerprint (little-endian) + the Avro binary body. Decoders find the
writer schema by fingerprint among every ``.avsc`` in ``schemas/`` and resolve it
to the newest known version of the same record (reader schema), so old and new
writers both decode.

Bodies are written, and read when the writer schema is the newest, by functions generated
once per schema (``services/common/avro_compiled.py``, the same bytes as fastavro's);
fastavro resolves an older writer's body to the newest schema.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from services.common.avro_compiled import Reader, Unsupported, Writer, compile_reader, compile_writer
from services.common.errors import PoisonMessage

MARKER = b"\xc3\x01"
HEADER_LENGTH = 10


def schemas_dir() -> Path:
    override = os.environ.get("OPTOUT_SCHEMAS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # full name, e.g. dev.optout.v1.OptOutRequested
    version: int
    parsed: Any = field(repr=False)
    fingerprint: bytes  # 8 bytes, as they appear on the wire
    # Generated once from ``parsed`` (services/common/avro_compiled.py); None: fastavro does it.
    writer: Writer | None = field(default=None, repr=False, compare=False)
    reader: Reader | None = field(default=None, repr=False, compare=False)

    @cached_property
    def short_name(self) -> str:  # computed once: read about three times per message decoded
        return self.name.rsplit(".", 1)[-1]


def _load(path: Path) -> SchemaVersion:
    raw = json.loads(path.read_text(encoding="utf-8"))
    parsed = fastavro.parse_schema(raw)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    version = int(path.name.split(".v", 1)[1].split(".", 1)[0])
    try:
        writer: Writer | None = compile_writer(parsed)
        reader: Reader | None = compile_reader(parsed)
    except Unsupported:
        writer = reader = None
    return SchemaVersion(
        raw["name"] if "." in raw["name"] else f"{raw['namespace']}.{raw['name']}",
        version,
        parsed,
        fingerprint,
        writer,
        reader,
    )


class Codec:
    """Encodes records with the newest version of their schema; decodes any known version."""

    def __init__(self, directory: Path | None = None) -> None:
        folder = directory or schemas_dir()
        versions = [_load(p) for p in sorted(folder.glob("*.avsc"))]
        if not versions:
            raise FileNotFoundError(f"no .avsc schemas in {folder}")
        self._by_fingerprint: dict[bytes, SchemaVersion] = {v.fingerprint: v for v in versions}
        self._latest: dict[str, SchemaVersion] = {}
        for v in versions:
            current = self._latest.get(v.short_name)
            if current is None or v.version > current.version:
                self._latest[v.short_name] = v

    def latest(self, short_name: str) -> SchemaVersion:
        return self._latest[short_name]

    def encode(self, short_name: str, record: Mapping[str, Any]) -> bytes:
        schema = self._latest[short_name]
        if schema.writer is not None:
            out = bytearray(MARKER)
            out += schema.fingerprint
            schema.writer(out, record)
            return bytes(out)
        buffer = io.BytesIO()
        buffer.write(MARKER)
        buffer.write(schema.fingerprint)
        fastavro.schemaless_writer(buffer, schema.parsed, record)
        return buffer.getvalue()

    def decode(self, payload: bytes | None, expect: str | None = None) -> tuple[str, dict[str, Any]]:
        """Return ``(short schema name, record)``; raise ``PoisonMessage`` on anything unreadable."""
        if not payload:
            raise PoisonMessage("empty_value", "message has no value")
        if len(payload) < HEADER_LENGTH or payload[:2] != MARKER:
            raise PoisonMessage("undecodable", "not Avro single-object encoding (no C3 01 marker)")
        writer = self._by_fingerprint.get(payload[2:HEADER_LENGTH])
        if writer is None:
            raise PoisonMessage(
                "unknown_fingerprint", f"writer schema {payload[2:HEADER_LENGTH].hex()} is not known"
            )
        if expect is not None and writer.short_name != expect:
            raise PoisonMessage("wrong_message_type", f"expected {expect}, got {writer.short_name}")
        reader = self._latest[writer.short_name]
        if reader is writer and writer.reader is not None:
            return writer.short_name, _read_compiled(writer.reader, payload)
        buffer = io.BytesIO(payload)
        buffer.seek(HEADER_LENGTH)
        try:
            record = fastavro.schemaless_reader(
                buffer, writer.parsed, reader.parsed if reader is not writer else None
            )
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise PoisonMessage("undecodable", f"{type(exc).__name__} while reading body") from None
        if buffer.tell() != len(payload):
            raise PoisonMessage("undecodable", "trailing bytes after the Avro body")
        if not isinstance(record, dict):
            raise PoisonMessage("undecodable", "body is not a record")
        return writer.short_name, record


def _read_compiled(read: Reader, payload: bytes) -> dict[str, Any]:
    try:
        record, end = read(payload, HEADER_LENGTH)
    except Exception as exc:  # any malformed body: an index, a length, UTF-8, a date out of range
        raise PoisonMessage("undecodable", f"{type(exc).__name__} while reading body") from None
    if end != len(payload):
        raise PoisonMessage("undecodable", "trailing bytes after the Avro body")
    return record


@lru_cache(maxsize=1)
def default_codec() -> Codec:
    return Codec()
