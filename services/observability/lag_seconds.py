"""Lag in seconds: the age of the oldest unconsumed message, read from its timestamp.

The oldest unconsumed message of a partition is the one at the group's committed
offset. A separate consumer that never joins a group (``assign`` + fetch from that
offset, nothing committed) reads it and keeps its timestamp. Timestamps are cached per
partition and offset: while the committed offset does not move, the age grows with the
clock and nothing is read again. When it moves, the partition is read again at most
once per ``min_interval`` seconds; in between the previous, older timestamp is used,
so the age is over-stated by at most ``min_interval`` (never under-stated).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.common.kafka import NATIVE_LOG
from services.common.logging import get_logger
from services.common.settings import Settings

log = get_logger(__name__)

TopicPartitionKey = tuple[str, int]


@dataclass
class _Cached:
    offset: int
    timestamp_ms: int | None
    read_at: float


def reader_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_config(),
        # A group id is required by the client, but this consumer never subscribes or
        # commits, so no group is ever created on the broker.
        "group.id": f"optout-lag-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 65_536,
        "queued.max.messages.kbytes": 1024,
        "client.id": "optout-lag-reader",
        "logger": NATIVE_LOG,
    }


class OffsetTimestampReader:
    """Timestamp (ms) of the message at an offset, per partition, cached and rate-limited."""

    def __init__(
        self,
        settings: Settings,
        min_interval: float = 5.0,
        read_timeout: float = 3.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._min_interval = min_interval
        self._read_timeout = read_timeout
        self._monotonic = monotonic
        self._cache: dict[TopicPartitionKey, _Cached] = {}
        self._consumer: Consumer | None = None

    def timestamps(self, wanted: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int | None]:
        """Timestamp of the message at ``wanted[tp]`` (the oldest unconsumed) for each tp."""
        now = self._monotonic()
        to_read: dict[TopicPartitionKey, int] = {}
        for tp, offset in wanted.items():
            cached = self._cache.get(tp)
            if cached is not None and (
                (cached.offset == offset and cached.timestamp_ms is not None)
                or now - cached.read_at < self._min_interval
            ):
                continue
            to_read[tp] = offset
        if to_read:
            found = self._read(to_read)
            for tp, offset in to_read.items():
                self._cache[tp] = _Cached(offset, found.get(tp), now)
        for tp in list(self._cache):
            if tp not in wanted:
                del self._cache[tp]
        return {tp: self._cache[tp].timestamp_ms if tp in self._cache else None for tp in wanted}

    def high_watermarks(self, partitions: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Each partition's high watermark, asked of its leader (a ListOffsets request each).
        librdkafka's statistics carry the one its consumer's last fetch saw, and a partition
        the consume loop has paused (a batch waiting for its retry) is not fetched, so there
        the statistics' lag stops counting what arrives (deploy/observability.md)."""
        found: dict[TopicPartitionKey, int] = {}
        consumer = self._ensure_consumer()
        for topic, partition in partitions:
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=self._read_timeout, cached=False
                )
            except KafkaException as exc:
                log.warning("reading a partition's high watermark failed", error=str(exc))
                break
            found[(topic, partition)] = high
        return found

    def _read(self, offsets: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int | None]:
        found: dict[TopicPartitionKey, int | None] = {}
        consumer = self._ensure_consumer()
        try:
            consumer.assign([TopicPartition(t, p, max(0, o)) for (t, p), o in offsets.items()])
            deadline = self._monotonic() + self._read_timeout
            while len(found) < len(offsets) and self._monotonic() < deadline:
                for message in consumer.consume(len(offsets), 0.2):
                    tp = (message.topic() or "", message.partition() or 0)
                    if tp not in offsets or tp in found:
                        continue
                    if message.error() is not None:
                        # End of partition: nothing to read there (the lag was just consumed).
                        found[tp] = None
                        continue
                    kind, ts = message.timestamp()
                    found[tp] = ts if kind != 0 and ts >= 0 else None
            consumer.unassign()
        except KafkaException as exc:
            log.warning("reading the oldest unconsumed message failed", error=str(exc))
            self.close()
        return found

    def _ensure_consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(reader_config(self._settings))
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None
