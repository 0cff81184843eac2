"""The web's and inbound's publisher (services/web/publishing.py) with the in-process fake
producer: a delivery report that comes after its request's event loop has closed must not
stop the poll thread that serves every later request."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from services.common.settings import Settings
from services.web.publishing import AsyncPublisher, PublishUnavailable
from tests.support.fake_kafka import FakeBroker, FakeProducer


class HeldProducer(FakeProducer):
    """Delivers only while ``release`` is set: a broker that acknowledges late."""

    def __init__(self, broker: FakeBroker) -> None:
        super().__init__(broker)
        self.release = threading.Event()

    def poll(self, timeout: float = 0) -> int:
        if not self.release.is_set():
            self.release.wait(timeout)
            return 0
        return super().poll(timeout)


def test_a_report_after_its_event_loop_closed_leaves_later_requests_served() -> None:
    settings = Settings(topic_prefix="u.", web_publish_timeout_seconds=0.3)
    broker = FakeBroker()
    producer = HeldProducer(broker)
    publisher = AsyncPublisher(settings, lambda: producer, service="web-closed-loop-test")
    publisher.start()
    try:
        first = publisher.prepare({"event_id": str(uuid.uuid4()), "email": "a@example.com", "scopes": "ALL"})
        with pytest.raises(PublishUnavailable):  # no acknowledgement in time; its loop then closes
            asyncio.run(publisher.publish(first))
        producer.release.set()  # the late report now reaches the poll thread
        second = publisher.prepare({"event_id": str(uuid.uuid4()), "email": "b@example.com", "scopes": "ALL"})
        asyncio.run(publisher.publish(second))  # acknowledged: the poll thread still serves
    finally:
        publisher.close()
    assert [p.key for p in producer.to(settings.requests_topic)] == [first.key.encode(), second.key.encode()]
