"""Kafka client factories and helpers shared by every service.

confluent-kafka practice: poll -> check ``msg.error()`` -> process -> commit ->
``close()`` in ``finally``; ``producer.poll(0)`` in loops; delivery reports checked
before offsets are committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from services.common.errors import ConfigurationError, RetriableError
from services.common.logging import get_logger
from services.common.settings import Settings

log = get_logger(__name__)

Headers = list[tuple[str, str | bytes | None]]


# librdkafka's own log lines ("%3|...|FAIL|... Connection refused", every 50 ms while a
# broker is down) would flood stderr. Client errors reach ``_error_cb`` instead, logged
# structured and at most once per error code every 30 s; native lines go to this stdlib
# logger, silent unless someone lowers its level to debug a client.
NATIVE_LOG = logging.getLogger("librdkafka")
NATIVE_LOG.setLevel(logging.CRITICAL)
_ERROR_LOG_INTERVAL_SECONDS = 30.0
_last_error_logged: dict[str, float] = {}


def _error_cb(err: KafkaError) -> None:
    # librdkafka reports broker-down etc. here; it reconnects by itself.
    now = time.monotonic()
    code = err.name()
    if now - _last_error_logged.get(code, -_ERROR_LOG_INTERVAL_SECONDS) >= _ERROR_LOG_INTERVAL_SECONDS:
        _last_error_logged[code] = now
        log.warning("kafka client error", code=code, reason=err.str())


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 30_000,
        "error_cb": _error_cb,
        "logger": NATIVE_LOG,
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **settings.kafka_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.wait.max.ms": 50,
        "error_cb": _error_cb,
        "logger": NATIVE_LOG,
    }
    config.update(overrides)
    return config


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, **overrides))


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, **overrides))


def make_admin(settings: Settings) -> AdminClient:
    config: dict[str, Any] = {**settings.kafka_config(), "logger": NATIVE_LOG}
    return AdminClient(config)


def check_broker(settings: Settings, timeout: float = 10.0) -> None:
    """Raise ``ConfigurationError`` with one clear line when the broker does not answer."""
    admin = make_admin(settings)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ConfigurationError(
            f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f}s "
            f"({exc.args[0].str() if exc.args else exc}); check OPTOUT_KAFKA_BOOTSTRAP and "
            "the security settings, or run 'make up'"
        ) from None


def create_topics(
    settings: Settings, topics: Iterable[str], partitions: int | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    admin = make_admin(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
            )
            for t in wanted
        ],
        operation_timeout=timeout,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


@dataclass
class DeliveryTracker:
    """Counts delivery reports of one batch; ``wait()`` flushes and raises on any failure."""

    producer: Producer
    pending: int = 0
    failures: list[str] = field(default_factory=list)

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        self.pending -= 1
        if err is not None:
            self.failures.append(f"{err.name()}: {err.str()}")

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room (backpressure).
                self.producer.poll(0.1)
        self.pending += 1
        if self.pending % 500 == 0:  # serve delivery reports now and then, not per message
            self.producer.poll(0)

    def wait(self, timeout: float = 30.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining or self.pending > 0:
            raise RetriableError(f"{self.pending} messages not delivered within {timeout:.0f}s")
        if self.failures:
            first = self.failures[0]
            count = len(self.failures)
            self.failures = []
            raise RetriableError(f"{count} messages failed delivery (first: {first})")


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Offsets to commit after ``messages``: highest offset + 1 per partition."""
    highest: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic() or "", m.partition() or 0)
        offset = m.offset() or 0
        if offset >= highest.get(tp, -1):
            highest[tp] = offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]


def header_pairs(message: Message) -> Headers:
    """A message's headers as (name, value) pairs (librdkafka gives a list; be lenient)."""
    raw = message.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(name), value) for name, value in items]


def dlq_headers(message: Message, reason: str, detail: str, service: str) -> Headers:
    """Headers of a dead-lettered message: why, and where it came from."""
    original = header_pairs(message)
    return [
        *original,
        ("optout.dlq.reason", reason.encode()),
        ("optout.dlq.detail", detail.encode("utf-8", "replace")[:1000]),
        ("optout.dlq.service", service.encode()),
        ("optout.dlq.topic", (message.topic() or "").encode()),
        ("optout.dlq.partition", str(message.partition()).encode()),
        ("optout.dlq.offset", str(message.offset()).encode()),
    ]


# The broker's default message size limit is ~1 MiB; a dead letter carries the original
# bytes plus headers, so very large originals are cut (and say so) rather than failing
# delivery forever.
MAX_DEAD_LETTER_BYTES = 512 * 1024


def dead_letter(
    tracker: DeliveryTracker, topic: str, message: Message, reason: str, detail: str, service: str
) -> None:
    """Copy ``message`` (key and bytes unchanged, up to 512 KiB) to a DLQ topic with its reason."""
    value = message.value() or b""
    headers = dlq_headers(message, reason, detail, service)
    if len(value) > MAX_DEAD_LETTER_BYTES:
        headers.append(("optout.dlq.truncated_from_bytes", str(len(value)).encode()))
        value = value[:MAX_DEAD_LETTER_BYTES]
    tracker.produce(topic, value=value, key=message.key(), headers=headers)
