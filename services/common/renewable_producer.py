"""A producer that is replaced when it has delivered nothing but timeouts for too long.

Once, in a fault run (2026-12-02 17:57 UTC), a connector's producer delivered nothing after
the broker restarted: every delivery of its acks timed out (``_MSG_TIMED_OUT``, every
``message.timeout.ms``) for five minutes while its consumer had rejoined and the other
services' producers delivered, so its batch was retried until the run gave up. librdkafka's
tracker has reports of producers that deliver nothing after a broker restart until they are
recreated (https://github.com/confluentinc/librdkafka/issues/3009). A consume-loop service
therefore produces through a ``RenewableProducer``: ``DeliveryTracker.wait`` reports each
batch's outcome, and after ``RENEW_AFTER_TIMED_OUT_BATCHES`` batches in a row in which
nothing was delivered and deliveries timed out, the librdkafka handle is purged and a new one
made (new connections, fresh metadata, a new idempotent producer id). Nothing is lost: the
batch that timed out is retried by the consume loop (its offsets were not stored) and writes
its messages again through the new handle; the consumers dedupe by command id.

A real outage looks the same from here: the handle is then replaced every few batches, which
costs a reconnect and is logged and counted (``on_renew``: the services count
``optout_producers_renewed_total``, alert ``OptoutProducerRenewed``). This module imports no
metrics: ``services.common.kafka`` imports it, and the CLI imports that module at start-up.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer

from services.common.logging import get_logger

log = get_logger(__name__)

# Two batches of nothing but timeouts: at ``message.timeout.ms`` = 30 s (producer_config) and
# the loop's backoff between them, about a minute without a delivery. A broker restart that
# takes less (the fault run's take 5-20 s) renews nothing.
RENEW_AFTER_TIMED_OUT_BATCHES = 2
RENEWED = "producer delivered nothing and timed out; replacing it"  # the log event

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class RenewableProducer:
    """The subset of ``confluent_kafka.Producer`` the steps use, over a handle that
    ``batch_outcome`` replaces after ``renew_after`` batches in a row delivered nothing and
    timed out."""

    def __init__(
        self,
        make: Callable[[], Producer],
        service: str,
        on_renew: Callable[[], None] = lambda: None,
        renew_after: int = RENEW_AFTER_TIMED_OUT_BATCHES,
    ) -> None:
        self._make = make
        self.service = service
        self._on_renew = on_renew
        self.renew_after = renew_after
        self.handle = make()
        self.timed_out_batches = 0

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        self.handle.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)

    def poll(self, timeout: float = -1) -> int:
        return self.handle.poll(timeout)

    def flush(self, timeout: float = -1) -> int:
        return self.handle.flush(timeout)

    def batch_outcome(self, delivered: int, timed_out: int) -> None:
        """One batch's deliveries: ``delivered`` succeeded, ``timed_out`` timed out (in their
        delivery reports, or still queued when the batch gave up waiting)."""
        if delivered or not timed_out:
            self.timed_out_batches = 0
            return
        self.timed_out_batches += 1
        if self.timed_out_batches >= self.renew_after:
            self.renew()

    def renew(self) -> None:
        """Drop what the handle still holds (its batch is retried) and make a new one."""
        log.warning(
            RENEWED,
            service=self.service,
            batches=self.timed_out_batches,
        )
        old, self.handle = self.handle, self._make()
        self.timed_out_batches = 0
        self._on_renew()
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.poll(0)  # serve the purged messages' reports (to the batch that already failed)


# What a step produces through: a renewable producer in the services, a plain one (or a
# test's fake) elsewhere.
Producing = Producer | RenewableProducer
