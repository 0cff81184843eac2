from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.avro import MARKER, default_codec
from services.common.errors import PoisonMessage


def _request(**overrides):
    record = {
        "event_id": "e-1",
        "email": "a@example.com",
        "scopes": ["ALL"],
        "source": "API",
        "requested_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    record.update(overrides)
    return record


def test_single_object_encoding_header_is_marker_and_fingerprint():
    codec = default_codec()
    payload = codec.encode("OptOutRequested", _request())
    assert payload[:2] == MARKER == b"\xc3\x01"
    assert payload[2:10] == codec.latest("OptOutRequested").fingerprint


def test_fingerprint_matches_avro_spec_rabin_for_a_known_schema():
    # Avro spec test vector: the CRC-64-AVRO fingerprint of "null" is 7195948357588979594,
    # written little-endian in single-object encoding.
    import fastavro.schema

    fp = bytes.fromhex(fastavro.schema.fingerprint('"null"', "CRC-64-AVRO"))
    assert int.from_bytes(fp, "little") == 7195948357588979594


def test_round_trip_every_schema():
    codec = default_codec()
    name, record = codec.decode(codec.encode("OptOutRequested", _request(phone="+14155550123")))
    assert name == "OptOutRequested"
    assert record["phone"] == "+14155550123"
    assert record["requested_at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ack = {
        "command_id": "c",
        "request_id": "r",
        "destination": "mail_house",
        "status": "APPLIED",
        "detail": None,
        "acked_at": 1,
    }
    assert codec.decode(codec.encode("SuppressionAck", ack))[0] == "SuppressionAck"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"\x00\x01garbage-bytes", "undecodable"),
        (b"\xc3\x01" + b"\xff" * 8 + b"body", "unknown_fingerprint"),
    ],
)
def test_unreadable_payloads_are_poison_with_a_reason(payload, reason):
    with pytest.raises(PoisonMessage) as info:
        default_codec().decode(payload)
    assert info.value.reason == reason


def test_truncated_and_trailing_bodies_are_undecodable():
    codec = default_codec()
    payload = codec.encode("OptOutRequested", _request())
    for bad in (payload[:-5], payload + b"\x00\x00"):
        with pytest.raises(PoisonMessage) as info:
            codec.decode(bad)
        assert info.value.reason == "undecodable"


def test_wrong_message_type_is_rejected():
    codec = default_codec()
    ack = {
        "command_id": "c",
        "request_id": "r",
        "destination": "d",
        "status": "APPLIED",
        "detail": None,
        "acked_at": 1,
    }
    with pytest.raises(PoisonMessage) as info:
        codec.decode(codec.encode("SuppressionAck", ack), expect="OptOutRequested")
    assert info.value.reason == "wrong_message_type"


@given(st.binary(max_size=300))
def test_decode_never_crashes_on_arbitrary_bytes(payload):
    codec = default_codec()
    try:
        name, record = codec.decode(payload)
    except PoisonMessage as exc:
        assert exc.reason in {"empty_value", "undecodable", "unknown_fingerprint"}
        return
    assert isinstance(record, dict) and name in {
        "OptOutRequested",
        "SuppressionCommand",
        "SuppressionAck",
        "OptOutConfirmed",
    }


@given(st.binary(min_size=1, max_size=200))
def test_decode_of_a_known_header_with_random_body_is_a_record_or_poison(body):
    codec = default_codec()
    header = codec.encode("OptOutRequested", _request())[:10]
    try:
        _, record = codec.decode(header + body, expect="OptOutRequested")
    except PoisonMessage as exc:
        assert exc.reason == "undecodable"
        return
    assert "event_id" in record
