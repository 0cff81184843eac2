"""A producer that only times out is replaced, with real librdkafka handles and the real
broker (services/common/renewable_producer.py): the first handle points at a port nobody
listens on, so every delivery times out; after two such batches the handle is purged and
dropped, a new one made, and the batch's retry is delivered to the broker through it."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from services.common.errors import RetriableError
from services.common.kafka import DeliveryTracker, make_producer
from services.common.renewable_producer import RENEW_AFTER_TIMED_OUT_BATCHES, RenewableProducer
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
