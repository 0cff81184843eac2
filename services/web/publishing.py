"""An asyncio face on ``RequestPublisher``: validate, produce, await the broker's ack.

The confluent-kafka producer is served by one background thread calling ``poll()``;
each delivery report resolves an asyncio future on the event loop through
``call_soon_threadsafe``, so a request handler awaits its own message's acknowledgement
without ever blocking the loop. No ack within the timeout (broker down, queue full)
raises ``PublishUnavailable``: the web answers 503, never a success it cannot keep.

The producer is a ``RenewableProducer``: each delivery report is counted, and when
deliveries have timed out for a minute with nothing delivered (a librdkafka handle stuck
after a broker restart, librdkafka#3009) the poll thread replaces the handle; the web and
inbound count ``optout_producers_renewed_total{service}`` like the consume-loop services.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from services.common import metrics
from services.common.kafka import make_producer
from services.common.logging import get_logger
from services.common.renewable_producer import RenewableProducer
from services.common.settings import Settings
from services.publisher.publish import Prepared, RequestPublisher

log = get_logger(__name__)

SERVICE = "web"


class PublishUnavailable(Exception):
    """The broker did not acknowledge in time; ``retry_after`` seconds is a fair wait."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def web_producer(settings: Settings) -> Producer:
    timeout_ms = int(settings.web_publish_timeout_seconds * 1000)
    # librdkafka gives up on a message at the same moment the handler would, so a late
    # success after a 503 is rare (and harmless: the event id is deterministic).
    return make_producer(
        settings,
        **{"message.timeout.ms": timeout_ms, "linger.ms": 2, "queue.buffering.max.messages": 100_000},
    )


class AsyncPublisher:
    def __init__(
        self,
        settings: Settings,
        make: Callable[[], Producer] | None = None,
        service: str = SERVICE,
    ) -> None:
        """``make``: the librdkafka handles (default ``web_producer``); ``service``: the
        label of ``optout_producers_renewed_total``."""
        self.settings = settings
        renewed = metrics.PRODUCERS_RENEWED.labels(service)
        self.producer = RenewableProducer(make or (lambda: web_producer(settings)), service, renewed.inc)
        self.publisher = RequestPublisher(settings, producer=self.producer)
        self.timeout = settings.web_publish_timeout_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="web-producer-poll", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self.producer.poll(0.05)
            self.producer.renew_if_due()

    def prepare(self, fields: Mapping[str, Any]) -> Prepared:
        """Validate like intake; raises ``PoisonMessage`` or ``ValueError``."""
        return self.publisher.prepare(fields)

    async def publish(self, prepared: Prepared) -> None:
        """Produce one OptOutRequested and return once the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            self.producer.delivery_outcome(err)
            try:
                loop.call_soon_threadsafe(_resolve, done, err)
            except RuntimeError:  # its event loop closed (the server stopped): nobody awaits it
                return  # and an exception here would end the poll thread that serves the rest

        value = self.publisher.codec.encode("OptOutRequested", prepared.record)
        try:
            self.producer.produce(
                self.settings.requests_topic, value=value, key=prepared.key, on_delivery=on_delivery
            )
        except BufferError:
            raise PublishUnavailable("producer queue full", retry_after=2) from None
        try:
            await asyncio.wait_for(done, self.timeout)
        except TimeoutError:
            raise PublishUnavailable("no acknowledgement in time") from None

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded), then stop the poll thread."""
        remaining = self.producer.flush(timeout)
        if remaining:
            log.warning("web producer closed with undelivered messages", count=remaining)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _resolve(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():  # the handler gave up already
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(PublishUnavailable(f"delivery failed: {err.name()}"))
