"""The one consume loop every service runs (after getsentry/arroyo's run loop).

A service provides a *step* with a tiny interface::

    submit(messages)  # make the batch durable (database commit, delivery reports); idempotent
    poll()            # serve callbacks and periodic work between batches
    close()

The loop does the rest: consume a batch, hand it to the step, store offsets only
after ``submit`` returned (librdkafka commits the stored offsets every
OPTOUT_COMMIT_INTERVAL_MS, on a revocation and on close; 0: a synchronous commit after
every batch), retry ``RetriableError`` with exponential backoff and
jitter (tenacity; never sooner than the error's ``retry_after``, e.g. a provider's
Retry-After) while keeping the consumer in its group with its partitions paused, handle
cooperative rebalances and stop cleanly on SIGTERM after the current batch. This is the
only retry of a batch: a step that fails raises, after making durable what it finished.

Whoever watches the loop (lag metrics, ``/healthz``) plugs in a ``LoopObserver``: it
adds consumer settings (a ``stats_cb``), hears about start and stop, and gets a beat
on every poll, also while a batch is being retried. ``service``/``group`` (plus topic,
partition and offset per message at debug level) are bound in the log context.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from services.common import metrics
from services.common.errors import RetriableError
from services.common.kafka import make_consumer, next_offsets
from services.common.logging import get_logger
from services.common.settings import BATCH_LINGER_MS, Settings

log = get_logger(__name__)

IDLE_POLL_SECONDS = 0.2  # longest single poll while a batch waits for its retry
# A consumer whose partitions were lost (its session expired, e.g. while the broker restarted)
# and that is still no member of its group this long after is closed and a new one joins.
# librdkafka rejoins by itself; once, in a fault run (2026-12-02), two consumers never did:
# their groups stayed empty and their commands waited until the run gave up (README, "What
# does not work yet"). An instance beyond the partition count is a member with no partitions
# and is left alone.
REJOIN_SECONDS = 60.0


class Step(Protocol):
    def submit(self, messages: Sequence[Message]) -> None: ...

    def poll(self) -> None: ...

    def close(self) -> None: ...


class LoopObserver(Protocol):
    """What the loop tells whoever watches it (``services.observability.loop`` wires the
    lag metrics and ``/healthz``; the loop knows nothing of them)."""

    def consumer_config(self) -> dict[str, Any]:
        """Settings merged into the consumer's (e.g. ``stats_cb``)."""
        ...

    def started(self) -> None: ...

    def beat(self) -> None:
        """The loop polled the consumer (it is alive and in its group)."""
        ...

    def stopped(self) -> None: ...


class NoObserver:
    def consumer_config(self) -> dict[str, Any]:
        return {}

    def started(self) -> None:
        return None

    def beat(self) -> None:
        return None

    def stopped(self) -> None:
        return None


class ConsumerFactory(Protocol):
    """``make_consumer``, or a test's fake."""

    def __call__(self, settings: Settings, group_id: str, **overrides: Any) -> Consumer: ...


# --- waiting between attempts ------------------------------------------------------------
def retry_wait_seconds(retry_after: float | None, backoff: float, cap: float) -> float:
    """Seconds before the next attempt: our jittered exponential ``backoff``, but never
    sooner than the failure's ``retry_after`` (a provider's Retry-After); at most ``cap``
    (a longer Retry-After is answered 429 again and waited out again)."""
    if retry_after is None:
        return min(backoff, cap)
    return min(max(retry_after, backoff), cap)


class wait_retry_after(wait_base):
    """tenacity wait: ``fallback`` backoff, raised to the failure's ``retry_after``."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        hint = error.retry_after if isinstance(error, RetriableError) else None
        return retry_wait_seconds(hint, self.fallback(retry_state), self.cap)


@dataclass(frozen=True)
class Backoff:
    """How long a failing batch waits before its next attempt: jittered exponential
    from ``initial_seconds`` up to ``max_seconds``, raised to the error's
    ``retry_after`` (honoured up to ``retry_after_max_seconds``)."""

    initial_seconds: float
    max_seconds: float
    retry_after_max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        cap = settings.retry_max_backoff_seconds
        return cls(min(0.2, cap), cap, cap)

    def wait(self) -> wait_base:
        return wait_retry_after(
            wait_random_exponential(multiplier=self.initial_seconds, max=self.max_seconds),
            cap=self.retry_after_max_seconds,
        )


def commit_config(settings: Settings) -> dict[str, Any]:
    """Consumer settings of the loop's commit cadence: with OPTOUT_COMMIT_INTERVAL_MS, the
    loop stores a batch's offsets once its work is durable and librdkafka commits what is
    stored every interval, on a revocation and on close (a crash redelivers at most an
    interval's batches, which every step processes idempotently); 0: none (the loop commits
    synchronously after each batch)."""
    if not settings.commit_interval_ms:
        return {}
    return {
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": settings.commit_interval_ms,
    }


class ConsumerLoop:
    def __init__(
        self,
        settings: Settings,
        service: str,
        topics: list[str],
        step: Step,
        stop: threading.Event,
        group_id: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        observer: LoopObserver | None = None,
        backoff: Backoff | None = None,
        consumer_factory: ConsumerFactory = make_consumer,
        monotonic: Callable[[], float] = time.monotonic,
        linger_ms: int = BATCH_LINGER_MS,
        interval_ms: int = 0,
    ) -> None:
        self.settings = settings
        # The service's own linger and interval (``services.common.settings``), unless the
        # settings set them.
        self.linger_ms = linger_ms if settings.batch_linger_ms is None else settings.batch_linger_ms
        self.interval_ms = interval_ms if settings.batch_interval_ms is None else settings.batch_interval_ms
        self._batch_started: float | None = None  # when the last batch was handed to the step
        self.service = service
        self.topics = topics
        self.step = step
        self.stop = stop
        self.group_id = group_id or settings.group(service)
        self._overrides = consumer_overrides or {}
        self.observer: LoopObserver = observer or NoObserver()
        self.backoff = backoff or Backoff.from_settings(settings)
        self._make_consumer = consumer_factory
        self._monotonic = monotonic
        self._revoked_during_batch = False
        self._assignment_changed = False
        self._lost_since: float | None = None  # when the partitions were last lost, until assigned
        self._unprocessed: dict[tuple[str, int], int] = {}
        self.consumer: Consumer | None = None
        # One Retrying for the loop's life, reused batch after batch; what a batch's retry
        # needs (its messages, whether it idled) sits on the loop while the batch is in hand
        # (``_in_hand``). A Retrying is a reference cycle (its state holds bound methods of
        # itself): one made per batch, with callbacks closing over the batch, kept each
        # batch's messages alive until the cyclic garbage collector ran, which in intake
        # (collector tuned and paused, ``services.common.gc_tuning.tune_gc``) was up to 20
        # batches later: 100,000 messages, about 60 MiB (README, "Memory through a backlog").
        self._in_hand: list[Message] = []
        self._idled = False
        self._retrying = Retrying(
            retry=retry_if_exception_type(RetriableError),
            wait=self.backoff.wait(),
            stop=self._stop_retrying,
            sleep=self._idle_for_retry,
            before_sleep=self._before_retry,
            reraise=False,
        )
        metrics.init_service_metrics(service, topics)
        # Bound once: ``labels()`` looks the child up on every call (issue #15: per batch).
        self._batch_size = metrics.BATCH_SIZE.labels(service)
        self._batch_seconds = metrics.BATCH_SECONDS.labels(service)
        self._last_processed = metrics.LAST_PROCESSED.labels(service)

    def _heartbeat(self) -> None:
        self.observer.beat()

    # --- rebalance callbacks ------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.service, "assigned").inc()
        # Inside the callback the assignment does not include ``partitions`` yet.
        owned = {(tp.topic, tp.partition) for tp in [*consumer.assignment(), *partitions]}
        metrics.ASSIGNED_PARTITIONS.labels(self.service).set(len(owned))
        log.info("partitions assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self._lost_since = None
        # librdkafka keeps a partition's pause flag across revocation and re-assignment:
        # partitions that come back must be resumed (unless we are idling, see _idle).
        self._assignment_changed = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # A batch's offsets are stored (or committed) before the next consume(), and
        # librdkafka commits the stored offsets of revoked partitions, so nothing of a revoked
        # partition is pending here unless we are retrying a batch: then the batch is
        # finished by its retry and the new owner re-processes (idempotently).
        self._revoked_during_batch = True
        metrics.REBALANCES.labels(self.service, "revoked").inc()
        metrics.ASSIGNED_PARTITIONS.labels(self.service).set(
            max(0, len(consumer.assignment()) - len(partitions))
        )
        log.info("partitions revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked_during_batch = True
        metrics.REBALANCES.labels(self.service, "lost").inc()
        log.warning("partitions lost", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self._lost_since is None:
            self._lost_since = self._monotonic()

    # --- the loop -------------------------------------------------------------------
    def run(self) -> None:
        self.observer.started()
        try:
            with structlog.contextvars.bound_contextvars(service=self.service, group=self.group_id):
                self._run()
        finally:
            self.observer.stopped()

    def _run(self) -> None:
        try:
            while self._session():
                log.warning(
                    "still no member of the group long after losing its partitions; a new consumer joins",
                    seconds=REJOIN_SECONDS,
                )
        finally:
            self.step.close()

    def _session(self) -> bool:
        """Consume with one consumer until ``stop``; True when it must be replaced (still no
        member of its group ``REJOIN_SECONDS`` after losing its partitions)."""
        overrides = {**commit_config(self.settings), **self.observer.consumer_config(), **self._overrides}
        consumer = self._make_consumer(self.settings, self.group_id, **overrides)
        self.consumer = consumer
        self._lost_since = None
        consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("consuming", topics=self.topics, group=self.group_id)
        try:
            while not self.stop.is_set():
                self._revoked_during_batch = False
                messages = self._next_batch(consumer)
                if self._assignment_changed:
                    self._assignment_changed = False
                    consumer.resume(consumer.assignment())
                self._heartbeat()
                self.step.poll()
                batch = [m for m in messages if self._usable(m)]
                if batch:
                    self._process(consumer, batch)
                elif self._left_out(consumer):
                    return True
            return False
        finally:
            log.info("closing consumer")
            consumer.close()
            self.consumer = None

    def _left_out(self, consumer: Consumer) -> bool:
        """Whether the partitions were lost ``REJOIN_SECONDS`` ago and the consumer is still no
        member of its group (librdkafka did not rejoin)."""
        if self._lost_since is None or self._monotonic() - self._lost_since < REJOIN_SECONDS:
            return False
        if consumer.memberid():
            self._lost_since = None  # a member, with nothing to consume: more instances than partitions
            return False
        return True

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """Wait up to OPTOUT_BATCH_TIMEOUT_MS for a first message, then take what else comes
        within the service's linger (``linger_ms``, or OPTOUT_BATCH_LINGER_MS when set; 0: what
        is fetched already) and until its interval (``interval_ms``, or OPTOUT_BATCH_INTERVAL_MS)
        has passed since the previous batch started, whichever is later, up to
        OPTOUT_BATCH_SIZE (a batch already full when its first message comes does not wait).

        A batch starts as soon as a message is there: ``consume(n, timeout)`` alone would
        wait the whole timeout whenever fewer than ``n`` messages come, which at a steady
        rate adds the timeout to every hop of the pipeline. Under load batches grow by
        themselves: what arrives while a batch is processed is the next batch."""
        size = self.settings.batch_size
        first = consumer.consume(1, self.settings.batch_timeout_ms / 1000)
        if not first or size == 1:
            return first
        batch = first + consumer.consume(size - 1, 0)  # what is fetched already
        now = self._monotonic()
        wait = self.linger_ms / 1000
        if self.interval_ms and self._batch_started is not None:
            wait = max(wait, self._batch_started + self.interval_ms / 1000 - now)
        if len(batch) < size and wait > 0 and not self.stop.is_set():
            # One wait, then what came meanwhile: ``consume(n, linger)`` woke this thread for
            # every fetched partition's messages to see whether ``n`` were there yet (a dozen
            # context switches per batch at 500/s; issue #15).
            self.stop.wait(wait)
            batch += consumer.consume(size - len(batch), 0)
        self._batch_started = self._monotonic()
        return batch

    def _usable(self, message: Message) -> bool:
        err = message.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        if err.fatal():
            raise KafkaException(err)
        log.warning("consume error", code=err.name(), reason=err.str())
        return False

    def _process(self, consumer: Consumer, batch: list[Message]) -> None:
        started = time.monotonic()
        if log.is_enabled_for(logging.DEBUG):  # not three calls per message for nothing
            for m in batch:
                log.debug("message received", topic=m.topic(), partition=m.partition(), offset=m.offset())
        self._in_hand = batch
        self._idled = False
        try:
            for attempt in self._retrying:
                with attempt:
                    self.step.submit(batch)
        except RetryError:
            log.warning("stopping while a batch was failing; it will be redelivered", messages=len(batch))
            return
        finally:
            self._in_hand = []
            if self._idled:
                self._reposition(consumer, batch)
        self._commit(consumer, batch)
        self._batch_size.observe(len(batch))
        self._batch_seconds.observe(time.monotonic() - started)
        self._last_processed.set_to_current_time()

    # The retry's callbacks (``self._retrying``), for the batch in hand.
    def _stop_retrying(self, _state: RetryCallState) -> bool:
        return self.stop.is_set()

    def _idle_for_retry(self, seconds: float) -> None:
        self._idled = True
        if self.consumer is None:  # only while _run holds one; never retry without a backoff
            self.stop.wait(seconds)
            return
        self._idle(self.consumer, seconds)

    def _before_retry(self, state: RetryCallState) -> None:
        metrics.RETRIES.labels(self.service, "batch").inc()
        for topic, count in Counter(m.topic() or "" for m in self._in_hand).items():
            metrics.MESSAGES_CONSUMED.labels(self.service, topic, "failed").inc(count)
        exc = state.outcome.exception() if state.outcome else None
        quiet = isinstance(exc, RetriableError) and not exc.log_each_retry
        (log.debug if quiet else log.warning)(
            "batch failed; retrying",
            attempt=state.attempt_number,
            error=str(exc),
            wait_seconds=round(state.upcoming_sleep, 2),
        )

    def _idle(self, consumer: Consumer, seconds: float) -> None:
        """Wait out a backoff while staying in the group: pause, keep polling, resume.

        Partitions assigned meanwhile are paused too. Should a message still arrive, it is
        not processed now: its partition is sought back to it afterwards (see _reposition),
        so nothing is skipped."""
        deadline = self._monotonic() + seconds
        try:
            while self._monotonic() < deadline and not self.stop.is_set():
                consumer.pause(consumer.assignment())
                message = consumer.poll(min(IDLE_POLL_SECONDS, max(0.0, deadline - self._monotonic())))
                if message is not None and message.error() is None:
                    key = (message.topic() or "", message.partition() or 0)
                    offset = message.offset() or 0
                    self._unprocessed[key] = min(offset, self._unprocessed.get(key, offset))
                self._heartbeat()
                self.step.poll()
        finally:
            self._assignment_changed = False
            consumer.resume(consumer.assignment())

    def _reposition(self, consumer: Consumer, batch: list[Message]) -> None:
        """After idling, point each partition still ours just past the batch (or back to
        the first message fetched but not processed during the pause), so nothing is
        skipped."""
        targets = {(tp.topic, tp.partition): tp.offset for tp in next_offsets(batch)}
        for key, offset in self._unprocessed.items():
            targets[key] = min(offset, targets.get(key, offset))
        self._unprocessed.clear()
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for (topic, partition), offset in targets.items():
            if (topic, partition) in assigned:
                try:
                    consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as exc:
                    log.warning("seek failed", topic=topic, partition=partition, error=str(exc))

    def _commit(self, consumer: Consumer, batch: list[Message]) -> None:
        offsets = next_offsets(batch)
        if self._revoked_during_batch:
            assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            offsets = [tp for tp in offsets if (tp.topic, tp.partition) in assigned]
        if not offsets:
            return
        try:
            if self.settings.commit_interval_ms:
                consumer.store_offsets(offsets=offsets)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The work is durable and idempotent: a failed commit means redelivery, not loss.
            log.warning("offset commit failed; batch will be redelivered", error=str(exc))
