"""The one dead-letter path (services/common/kafka.py ``dead_letter``): a dead letter is
always deliverable, whatever the size of the original, so a poison message can never
stop a service (issue #10, pipeline). Checked against the fake producer, which refuses
messages over its size limit at produce() like librdkafka (message.max.bytes 1,000,000)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message

from services.common.errors import RetriableError
from services.common.kafka import (
    MAX_DEAD_LETTER_BYTES,
    DeliveryTracker,
    dead_letter,
    dead_letter_record,
)
from tests.support.fake_kafka import FakeBroker, FakeProducer

DLQ = "optout.requests.dlq"


def _message(value: bytes, headers: list[tuple[str, bytes]], key: bytes = b"k") -> Message:
    return Message(topic="optout.requests", partition=2, offset=41, key=key, value=value, headers=headers)


def _size(value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes | None]]) -> int:
    return len(value or b"") + len(key or b"") + sum(len(n) + len(v or b"") for n, v in headers)


BIG_HEADERS = [("trace", b"t-1"), *[(f"blob{i}", b"h" * 200 * 1024) for i in range(3)]]


def test_a_huge_dead_letter_is_cut_under_the_limit_and_says_what_was_cut() -> None:
    broker = FakeBroker()
    producer = FakeProducer(broker)
    tracker = DeliveryTracker(producer)
    original = _message(b"v" * 900 * 1024, BIG_HEADERS, key=b"K" * 3000)
    dead_letter(tracker, DLQ, original, "undecodable", "not Avro " * 500, "intake")
    tracker.wait()
    [sent] = producer.to(DLQ)
    headers = dict(sent.headers)
    assert _size(sent.value, sent.key, sent.headers) <= MAX_DEAD_LETTER_BYTES
    assert headers["optout.dlq.reason"] == b"undecodable"
    assert headers["optout.dlq.service"] == b"intake"
    assert (headers["optout.dlq.topic"], headers["optout.dlq.partition"], headers["optout.dlq.offset"]) == (
        b"optout.requests",
        b"2",
        b"41",
    )
    assert len(headers["optout.dlq.detail"]) <= 1000
    assert headers["trace"] == b"t-1"  # small original headers are kept
    assert headers["optout.dlq.headers_dropped"] == b"blob0,blob1,blob2"
    assert headers["optout.dlq.truncated_from_bytes"] == str(900 * 1024).encode()
    assert headers["optout.dlq.key_truncated_from_bytes"] == b"3000"
    assert sent.key == b"K" * 1024
    assert sent.value is not None and len(sent.value) > 800 * 1024 and sent.value == b"v" * len(sent.value)


def test_a_small_dead_letter_keeps_key_bytes_and_headers_unchanged() -> None:
    original = _message(b"\x00\x01 not avro", [("a", b"1"), ("b", b"2")])
    record = dead_letter_record(DLQ, original, "undecodable", "detail", "intake")
    assert (record.key, record.value) == (b"k", b"\x00\x01 not avro")
    assert record.headers is not None
    names = [n for n, _ in record.headers]
    assert names[:2] == ["a", "b"] and "optout.dlq.reason" in names
    assert not [n for n in names if "truncated" in n or "dropped" in n]


def test_refused_at_produce_for_its_size_the_minimal_dead_letter_goes_instead() -> None:
    broker = FakeBroker(message_max_bytes=50_000)  # a producer with a lower message.max.bytes
    producer = FakeProducer(broker)
    tracker = DeliveryTracker(producer)
    dead_letter(tracker, DLQ, _message(b"x" * 60_000, [("a", b"1")]), "undecodable", "d", "connector.x")
    tracker.wait()
    [sent] = producer.to(DLQ)
    headers = dict(sent.headers)
    assert sent.value == b"" and sent.key == b"k"
    assert headers["optout.dlq.reason"] == b"undecodable" and headers["optout.dlq.minimal"] == b"1"
    assert headers["optout.dlq.offset"] == b"41" and "a" not in headers


def test_refused_by_the_broker_for_its_size_the_minimal_dead_letter_goes_instead() -> None:
    producer = FakeProducer(FakeBroker())
    producer.fail_deliveries = [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "topic limit")]
    tracker = DeliveryTracker(producer)
    dead_letter(tracker, DLQ, _message(b"x" * 1000, []), "invalid_ack", "d", "confirmer")
    tracker.wait()
    [sent] = producer.to(DLQ)
    assert dict(sent.headers)["optout.dlq.minimal"] == b"1" and sent.value == b""


def test_other_delivery_failures_still_fail_the_batch() -> None:
    producer = FakeProducer(FakeBroker())
    producer.fail_deliveries = [KafkaError(KafkaError._MSG_TIMED_OUT, "broker away")]
    tracker = DeliveryTracker(producer)
    dead_letter(tracker, DLQ, _message(b"x", []), "undecodable", "d", "intake")
    with pytest.raises(RetriableError):
        tracker.wait()
    assert producer.to(DLQ) == []
