"""A producer that only times out is replaced, with real librdkafka handles and the real
broker (services/common/renewable_producer.py): the first handle points at a port nobody
listens on, so every delivery times out; after two such batches the handle is purged and
dropped, a new one made, and the batch's retry is delivered to the broker through it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from services.common.errors import RetriableError
from services.common.kafka import DeliveryTracker, make_producer
from services.common.renewable_producer import RENEW_AFTER_TIMED_OUT_BATCHES, RenewableProducer
from services.web.publishing import AsyncPublisher, PublishUnavailable, web_producer
from tests.support.pipeline import isolated_settings, read_topic

pytestmark = pytest.mark.integration


def test_a_producer_that_only_times_out_is_replaced_and_the_retry_is_delivered(
    base_settings: dict[str, Any],
) -> None:
    cfg = isolated_settings(base_settings)
    topic = cfg.acks_topic
    handles: list[Producer] = []

    def make() -> Producer:
        if handles:
            handles.append(make_producer(cfg))
        else:  # nothing listens on port 1: a producer that delivers nothing
            stuck = cfg.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
            handles.append(make_producer(stuck, **{"message.timeout.ms": 1000}))
        return handles[-1]

    producer = RenewableProducer(make, "renewal-test")

    def batch() -> None:
        tracker = DeliveryTracker(producer)
        for i in range(3):
            tracker.produce(topic, f"v{i}".encode(), key=b"k")
        tracker.wait(timeout=10)

    for _ in range(RENEW_AFTER_TIMED_OUT_BATCHES):
        with pytest.raises(RetriableError, match="_MSG_TIMED_OUT"):
            batch()
    assert len(handles) == 2 and producer.handle is handles[1]
    batch()
    assert sorted(r.value for r in read_topic(cfg, topic, expect=3)) == [b"v0", b"v1", b"v2"]


def test_the_web_publisher_replaces_a_handle_that_only_times_out(base_settings: dict[str, Any]) -> None:
    """The web's and inbound's publisher has no batches: each request's delivery report
    counts. While its first handle times out every message, requests get 503s; once the
    timeouts span ``renew_after_seconds``, its poll thread replaces the handle and the next
    request is acknowledged by the real broker."""
    cfg = isolated_settings(base_settings, web_publish_timeout_seconds=1.0)
    # The replacement's first delivery waits for its connection, metadata and idempotent
    # producer id: on a busy machine that took longer than the stuck phase's 1 s (a
    # fresh-clone `make test`, 2026-12-03), so it gets the time a real request would.
    fresh = cfg.model_copy(update={"web_publish_timeout_seconds": 10.0})
    handles: list[Producer] = []

    def make() -> Producer:
        if handles:
            handles.append(web_producer(fresh))
        else:  # nothing listens on port 1
            handles.append(web_producer(cfg.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})))
        return handles[-1]

    publisher = AsyncPublisher(cfg, make, service="web-renewal-test")
    publisher.producer.renew_after_seconds = 2.0
    publisher.start()
    fields = {"event_id": str(uuid.uuid4()), "email": "renew@example.com", "scopes": "EMAIL_MARKETING"}
    prepared = publisher.prepare(fields)

    async def publish() -> bool:
        try:
            await publisher.publish(prepared)
        except PublishUnavailable:
            return False
        return True

    async def until_renewed() -> tuple[int, bool]:
        """Requests refused before the handle was replaced, and whether the next one is
        acknowledged (one event loop throughout: late reports resolve on it)."""
        refused = 0
        while len(handles) == 1 and refused < 20:
            assert not await publish()
            refused += 1
        publisher.timeout = fresh.web_publish_timeout_seconds
        return refused, await publish()

    try:
        refused, acknowledged = asyncio.run(until_renewed())
    finally:
        publisher.close()
    assert len(handles) == 2, "the stuck handle was never replaced"
    assert refused >= 2  # a timeout starts the window, a later one ends it
    assert acknowledged
    [record] = [r.decoded() for r in read_topic(cfg, cfg.requests_topic, expect=1)]
    assert record["event_id"] == prepared.record["event_id"]
