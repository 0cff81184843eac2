"""The generated Avro writers and readers (services/common/avro_compiled.py) against fastavro:
the same bytes for every record of every schema version, the same record read back."""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.avro import Codec, default_codec, schemas_dir
from services.common.avro_compiled import Unsupported, compile_reader, compile_writer
from services.common.errors import PoisonMessage

SCHEMAS = sorted(schemas_dir().glob("*.avsc"))
LONG = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Timestamps that read back as datetimes (years 1 to 9999), as epoch ms or aware datetimes.
MILLIS = st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_000)
MOMENTS = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


def _strategy(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(schema, str):
        if schema in named:
            return _strategy(named[schema], named)
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(min_value=-(2**31), max_value=2**31 - 1),
            "long": LONG,
            "string": st.text(max_size=40),
        }[schema]
    if isinstance(schema, list):
        return st.one_of(*(_strategy(s, named) for s in schema))
    if schema.get("logicalType") == "timestamp-millis":
        return st.one_of(MILLIS, MOMENTS)
    kind = schema["type"]
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_strategy(schema["items"], named), max_size=4)
    if kind == "record":
        named[schema["name"]] = schema
        required = {f["name"]: _strategy(f["type"], named) for f in schema["fields"] if "default" not in f}
        optional = {f["name"]: _strategy(f["type"], named) for f in schema["fields"] if "default" in f}
        return st.fixed_dictionaries(required, optional=optional)
    return _strategy(kind, named)


def _fastavro_bytes(parsed: Any, record: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    return buffer.getvalue()


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_every_schema_compiles(path: Path) -> None:
    parsed = fastavro.parse_schema(fastavro.schema.load_schema(path))
    compile_writer(parsed)
    compile_reader(parsed)


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_same_bytes_as_fastavro_and_read_back_the_same(path: Path, data: st.DataObject) -> None:
    raw = fastavro.schema.load_schema(path)
    parsed = fastavro.parse_schema(raw)
    record = data.draw(_strategy(raw, {}))
    out = bytearray()
    compile_writer(parsed)(out, record)
    expected = _fastavro_bytes(parsed, record)
    assert bytes(out) == expected
    read, end = compile_reader(parsed)(expected, 0)
    assert end == len(expected)
    assert read == fastavro.schemaless_reader(io.BytesIO(expected), parsed, None)


def test_codec_encodes_through_the_generated_writer() -> None:
    codec = default_codec()
    record = {
        "event_id": "e-1",
        "email": "a@example.com",
        "scopes": ["ALL", "SMS_MARKETING"],
        "source": "API",
        "requested_at": datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
        "postal_address": {
            "name": "Zoë",
            "lines": ["1 Main St", "Apt 2"],
            "city": "Austin",
            "postal_code": "78701",
            "country": "US",
        },
    }
    schema = codec.latest("OptOutRequested")
    assert schema.writer is not None and schema.reader is not None
    payload = codec.encode("OptOutRequested", record)
    assert payload[10:] == _fastavro_bytes(schema.parsed, record)
    assert codec.decode(payload)[1]["postal_address"]["region"] is None


@pytest.mark.parametrize(
    "body",
    [
        b"\x04\x41",  # a string longer than the body
        b"\x03",  # a negative string length
        b"\xff" * 11,  # a varint longer than 10 bytes
    ],
)
def test_malformed_bodies_are_undecodable(body: bytes) -> None:
    codec = default_codec()
    header = codec.encode(
        "OptOutRequested", {"event_id": "e", "scopes": [], "source": "API", "requested_at": 0}
    )
    with pytest.raises(PoisonMessage) as info:
        codec.decode(header[:10] + body)
    assert info.value.reason == "undecodable"


def test_an_enum_index_out_of_range_is_undecodable() -> None:
    codec = default_codec()
    ack = {"command_id": "c", "request_id": "r", "destination": "d", "status": "APPLIED", "acked_at": 1}
    payload = bytearray(codec.encode("SuppressionAck", ack))
    index = payload.index(b"\x02d") + 2  # the status enum follows the destination "d"
    for bad in (b"\x01", b"\x7e"):  # index -1, index 63
        payload[index : index + 1] = bad
        with pytest.raises(PoisonMessage):
            codec.decode(bytes(payload))


def test_a_schema_the_generator_does_not_handle_stays_with_fastavro(tmp_path: Path) -> None:
    (tmp_path / "Tagged.v1.avsc").write_text(
        '{"type": "record", "name": "Tagged", "namespace": "dev.optout.v1", "fields": ['
        '{"name": "tags", "type": {"type": "map", "values": "string"}}]}',
        encoding="utf-8",
    )
    with pytest.raises(Unsupported):
        compile_writer(fastavro.parse_schema({"type": "map", "values": "string"}))
    codec = Codec(tmp_path)
    assert codec.latest("Tagged").writer is None
    assert codec.decode(codec.encode("Tagged", {"tags": {"a": "b"}})) == ("Tagged", {"tags": {"a": "b"}})


def _plain_varint(n: int) -> bytes:
    """fastavro's own encoding of the long ``n`` (the oracle)."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", n)
    return out.getvalue()


EDGES = [s * (2**k + d) for k in (34, 35, 41, 42, 62) for d in (-1, 0, 1) for s in (1, -1)]


@settings(max_examples=500, deadline=None)
@given(n=st.one_of(LONG, MILLIS, st.sampled_from(EDGES)))
def test_the_unrolled_varint_is_the_plain_one(n: int) -> None:
    from services.common.avro_compiled import _varint

    assert _varint(n) == _plain_varint(n)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(millis=st.lists(st.one_of(MILLIS, st.sampled_from(EDGES[:24]), MOMENTS), min_size=1, max_size=4))
def test_timestamps_written_again_from_the_recent_cache_are_fastavros_bytes(millis: list[Any]) -> None:
    """A timestamp field's value seen lately is appended from ``write_long``'s cache."""
    codec = default_codec()
    schema = codec.latest("SuppressionCommand")
    assert schema.writer is not None
    for issued in millis * 2:  # the second round hits the cache
        record = {
            "command_id": "c",
            "request_id": "r",
            "destination": "d",
            "scopes": ["ALL"],
            "issued_at": issued,
            "deadline": issued,
            "requested_at": issued,
        }
        out = bytearray()
        schema.writer(out, record)
        assert bytes(out) == _fastavro_bytes(schema.parsed, record)
