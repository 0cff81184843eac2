"""How far a consumer fetches ahead behind a backlog of small messages, on the real broker.

Behind a backlog librdkafka fills its queue up to ``queued.min.messages`` (100,000 by
default) or ``queued.max.messages.kbytes``, whichever comes first, checked before each fetch.
For acks of about 100 bytes the count came first: the confirmer held about 100,000 of them
(about 75 MiB of librdkafka's memory) once it fell behind, and its resident size grew with
its lag (README, "Memory through a backlog"). ``consumer_config`` bounds the count
(OPTOUT_KAFKA_CONSUMER_QUEUE_MESSAGES) and what one fetch adds per partition."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from services.common.kafka import make_consumer, make_producer
from tests.support.pipeline import isolated_settings, wait_until

pytestmark = pytest.mark.integration

BACKLOG = 60_000  # ack-sized messages: far more than the queue may hold
LIMIT = 5_000


def test_a_consumer_behind_a_backlog_of_small_messages_queues_a_bounded_number(
    base_settings: dict[str, Any],
) -> None:
    cfg = isolated_settings(base_settings, kafka_consumer_queue_messages=LIMIT)
    producer = make_producer(cfg)
    for i in range(BACKLOG):
        producer.produce(cfg.acks_topic, value=uuid.uuid4().hex.encode() * 3, key=str(i))
        if i % 5_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    queued: list[int] = []  # librdkafka's consumer queue (its statistics' replyq: the
    # partitions' fetch queues are forwarded to it), one figure per statistics interval

    def on_stats(raw: str) -> None:
        queued.append(int(json.loads(raw)["replyq"]))

    consumer = make_consumer(
        cfg, f"prefetch-{uuid.uuid4().hex[:8]}", stats_cb=on_stats, **{"statistics.interval.ms": 100}
    )
    try:
        consumer.subscribe([cfg.acks_topic])
        taken = 0

        def first_batch() -> bool:
            nonlocal taken
            taken += len(consumer.consume(1_000, 0.2))
            return taken > 0

        wait_until(first_batch, timeout=30, message="the first messages")
        # Then the consumer takes one message at a time (a slow batch; stats_cb runs inside
        # consume) while librdkafka keeps fetching, for twenty statistics intervals.
        start = len(queued)

        def intervals_seen() -> bool:
            nonlocal taken
            taken += len(consumer.consume(1, 0.05))
            return len(queued) >= start + 20

        wait_until(intervals_seen, timeout=30, interval=0.05, message="statistics")
    finally:
        consumer.close()
    # The limit, plus one fetch of at most 256 KiB per partition (3 partitions, ~100 B each).
    assert 0 < max(queued) <= LIMIT + 3 * 262_144 // 96, queued
    assert max(queued) < BACKLOG - taken - 1_000  # the old settings queued the whole backlog
