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

A producer without batches (the web's and inbound's ``AsyncPublisher``: one message per
request, its delivery report awaited by the handler) reports each message instead
(``delivery_outcome``, from its delivery callback) and renews from its poll thread
(``renew_if_due``): when deliveries have timed out for ``RENEW_AFTER_SILENT_SECONDS`` with
nothing delivered in between. Those messages' requests were answered 503 already (their
clients retry; the event id is deterministic).

A real outage looks the same from here: the handle is then replaced every few batches, which
costs a reconnect and is logged and counted (``on_renew``: the services count
``optout_producers_renewed_total``, alert ``OptoutProducerRenewed``). This module imports no
metrics: ``services.common.kafka`` imports it, and the CLI imports that module at start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer

from services.common.logging import get_logger

log = get_logger(__name__)

# Two batches of nothing but timeouts: at ``message.timeout.ms`` = 30 s (producer_config) and
# the loop's backoff between them, about a minute without a delivery. A broker restart that
# takes less (the fault run's take 5-20 s) renews nothing.
RENEW_AFTER_TIMED_OUT_BATCHES = 2
# The same minute for a producer without batches: from the first timeout after a delivery to a
# timeout this long after it, nothing delivered.
RENEW_AFTER_SILENT_SECONDS = 60.0
RENEWED = "producer delivered nothing and timed out; replacing it"  # the log event

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class RenewableProducer:
    """The subset of ``confluent_kafka.Producer`` the steps use, over a handle that
    ``batch_outcome`` replaces after ``renew_after`` batches in a row delivered nothing and
    timed out (or, without batches, ``delivery_outcome`` and ``renew_if_due`` after
    ``renew_after_seconds`` of timeouts and no delivery)."""

    def __init__(
        self,
        make: Callable[[], Producer],
        service: str,
        on_renew: Callable[[], None] = lambda: None,
        renew_after: int = RENEW_AFTER_TIMED_OUT_BATCHES,
        renew_after_seconds: float = RENEW_AFTER_SILENT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make
        self.service = service
        self._on_renew = on_renew
        self.renew_after = renew_after
        self.renew_after_seconds = renew_after_seconds
        self._monotonic = monotonic
        self.handle = make()
        self.timed_out_batches = 0
        self._timing_out_since: float | None = None  # first timeout since the last delivery
        self._renewal_due = False

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

    def delivery_outcome(self, err: KafkaError | None) -> None:
        """One message's delivery report, for a producer without batches; call it from the
        delivery callback. Marks a renewal due (``renew_if_due``) once timeouts have come
        for ``renew_after_seconds`` with nothing delivered."""
        if err is None:
            self._timing_out_since = None
            return
        if err.code() != KafkaError._MSG_TIMED_OUT:
            return
        now = self._monotonic()
        if self._timing_out_since is None:
            self._timing_out_since = now
        elif now - self._timing_out_since >= self.renew_after_seconds:
            self._renewal_due = True

    def renew_if_due(self) -> bool:
        """Renew if ``delivery_outcome`` marked it due. Call it outside delivery callbacks
        (the handle's own ``poll`` cannot purge it): the web's poll thread, after each poll."""
        if not self._renewal_due:
            return False
        self.renew()
        return True

    def renew(self) -> None:
        """Drop what the handle still holds (its batch is retried) and make a new one."""
        since = self._timing_out_since
        log.warning(
            RENEWED,
            service=self.service,
            batches=self.timed_out_batches,
            seconds=None if since is None else round(self._monotonic() - since),
        )
        old, self.handle = self.handle, self._make()
        self.timed_out_batches = 0
        self._timing_out_since = None
        self._renewal_due = False
        self._on_renew()
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.poll(0)  # serve the purged messages' reports (to the batch that already failed)


# What a step produces through: a renewable producer in the services, a plain one (or a
# test's fake) elsewhere.
Producing = Producer | RenewableProducer
