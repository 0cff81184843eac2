"""The intake step: decode -> validate -> record (one transaction) -> fan out -> DLQ.

``submit`` returns only once the batch's requests are committed in PostgreSQL and
every command and dead letter of the batch has a successful delivery report; the
consume loop then commits the offsets.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Message, Producer
from prometheus_client import Counter

from services.common import metrics
from services.common.avro import Codec
from services.common.clock import Clock
from services.common.db import LazyConnection, first_line
from services.common.errors import PoisonMessage, RetriableError
from services.common.kafka import DeliveryTracker, dead_letter, make_producer
from services.common.logging import get_logger
from services.common.renewable_producer import Producing, RenewableProducer
from services.common.settings import Settings
from services.domain.planning import PlannedCommand, plan_commands
from services.domain.validation import OptOutRequest, decode_request
from services.intake.enrich import Directory, NoDirectory, directory_for
from services.intake.states import publish_current_states
from services.intake.store import RecordOutcome, record_batch
from services.suppression.entries import suppression_ring

log = get_logger(__name__)
SERVICE = "intake"
SUPERSEDED = Counter(
    "optout_intake_superseded_total",
    "Requests recorded as superseded (a newer request of the other action holds for every "
    "scope): closed with no command and no confirmation, by action.",
    ["action"],
)
STATES_PUBLISHED = Counter(
    "optout_suppression_states_published_total",
    "Subject states intake published to the compacted topic optout.suppressions (values and tombstones).",
)


# Intake's producers wait longer before sending a partial batch than the shared 5 ms
# (``services.common.kafka.producer_config``): a chunk's ~1,600 commands spread over every
# command topic's partitions, and at 5 ms they left in produce requests of ~25 messages, each a
# request for the broker to take in and replicate. Nothing waits for the linger: ``submit``
# flushes at the end of every batch (and the states thread per slice), and librdkafka sends
# at once what a flush finds queued. At 100 ms, 3x fewer produce requests per event and less
# CPU per event in intake, librdkafka and the broker (bench-intake, issue #15).
PRODUCER_OVERRIDES: dict[str, Any] = {"linger.ms": 100}


def intake_producer(settings: Settings, **overrides: Any) -> Producer:
    """A producer with intake's settings (``PRODUCER_OVERRIDES``, then ``overrides``)."""
    return make_producer(settings, **{**PRODUCER_OVERRIDES, **overrides})


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for a batch (issue #15). A batch keeps its requests,
    commands and rows alive until it is fanned out, and every collection on the way rescans
    them (they all survive it: reference counting frees them once the batch is done, and
    hardly any is in a cycle). Cycles made during the batch wait for the first collection
    after it (the thresholds of ``services.common.gc_tuning.tune_gc`` still apply), so memory
    stays bounded by a batch. A collector someone switched off stays off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _DataRejected(Exception):
    """The database refused the data itself (not a transient failure)."""


@dataclass
class _Accepted:
    message: Message
    request: OptOutRequest
    commands: list[PlannedCommand]


_Dead = tuple[Message, PoisonMessage]


@dataclass
class _Prepared:
    accepted: list[_Accepted] = field(default_factory=list)
    dead: list[_Dead] = field(default_factory=list)
    in_batch_duplicates: int = 0


@dataclass
class _Summary:
    new: int = 0
    duplicates: int = 0
    dead: int = 0
    commands: int = 0
    superseded: int = 0
    # Each committed chunk's subject states, being published (``IntakeStep._publish_states``).
    publishing: list[Future[int]] = field(default_factory=list)


# Records a chunk of requests (unique event ids) and their commands in one transaction.
Recorder = Callable[[list[OptOutRequest], dict[str, list[PlannedCommand]], datetime], RecordOutcome]


class IntakeStep:
    def __init__(
        self,
        settings: Settings,
        producer: Producing,
        codec: Codec,
        clock: Clock,
        recorder: Recorder | None = None,
        directory: Directory | None = None,
        states_producer: Producing | None = None,
    ) -> None:
        self.settings = settings
        self._recorder = recorder or self._record_in_database
        self.producer = producer
        self.codec = codec
        self.clock = clock
        self._ring = suppression_ring(settings)  # seals suppression-list entries
        # The customer directory (none by default when the recorder is a test's fake).
        self._directory = directory or (
            directory_for(settings, self._ring) if recorder is None else NoDirectory()
        )
        # One connection per database worker thread (keyed by thread id), and the epoch each
        # was opened in. A batch that failed bumps the epoch: every thread then opens its
        # connection anew on its next use. After an outage (backends terminated) each idle
        # connection would otherwise fail one attempt of the batch in turn, each attempt
        # followed by a longer backoff (three workers and the states thread: up to four).
        self._conns: dict[int, tuple[LazyConnection, int]] = {}
        self._epoch = 0
        self._db = ThreadPoolExecutor(
            max_workers=settings.intake_database_connections, thread_name_prefix="intake-db"
        )
        self._skew = timedelta(seconds=settings.clock_skew_seconds)
        self._destinations = settings.destinations  # a private attribute: slow to reach per event
        self._region = settings.default_phone_region
        self._topic = settings.requests_topic
        self._states_topic = settings.suppressions_topic
        self._states_db: tuple[LazyConnection, int] | None = None  # reads what goes to that topic
        # Subject states go out chunk by chunk as chunks commit, on a thread of their own with
        # a producer of their own (delivery reports are counted per tracker: one thread
        # produces and polls each producer). A test's fake recorder publishes no state.
        self._states_producer = states_producer or (
            RenewableProducer(
                lambda: intake_producer(settings), SERVICE, metrics.PRODUCERS_RENEWED.labels(SERVICE).inc
            )
            if recorder is None
            else producer
        )
        self._states_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake-states")
        self._command_topics: dict[str, str] = {}  # destination id -> its command topic
        for d in ("processed", "duplicate", "dead_lettered"):
            metrics.MESSAGES_CONSUMED.labels(SERVICE, self._topic, d)

    # --- Step interface ---------------------------------------------------------------
    def poll(self) -> None:
        self.producer.poll(0)

    def close(self) -> None:
        self._db.shutdown(wait=True)
        self._states_pool.shutdown(wait=True)
        self._directory.close()
        self.producer.flush(10)
        if self._states_producer is not self.producer:
            self._states_producer.flush(10)
        for conn, _ in self._conns.values():
            conn.close()
        self._conns.clear()
        if self._states_db is not None:
            self._states_db[0].close()

    def submit(self, messages: Sequence[Message]) -> None:
        """Record and fan out a batch, pipelined in chunks: while database workers (one
        connection each, ``OPTOUT_INTAKE_DATABASE_CONNECTIONS``) write chunks *n*, *n+1*
        (PostgreSQL works on other cores), this thread decodes and validates the next one,
        then encodes and produces the oldest committed chunk's commands, and hands the
        chunk's changed subjects to the states thread (``_publish_states``), which publishes
        their current state while the next chunks are written. Chunks hold distinct event
        ids (duplicates within a batch are removed first), so concurrent writes never wait
        on each other.
        Returns only when every chunk is committed and every message delivered. If a
        chunk fails, the whole batch is retried: chunks already committed then count as
        duplicates and only their unacknowledged commands are sent again.
        The cyclic garbage collector is paused while the batch is in hand (``paused_gc``)."""
        with paused_gc():
            try:
                self._submit(messages)
            except RetriableError:
                self._epoch += 1  # every connection is opened anew on its next use
                raise

    def _submit(self, messages: Sequence[Message]) -> None:
        now = self.clock.now()
        tracker = DeliveryTracker(self.producer)
        seen: dict[str, _Accepted] = {}
        summary = _Summary()
        size = max(1, self.settings.intake_pipeline_chunk)
        depth = self.settings.intake_database_connections
        in_flight: deque[tuple[_Prepared, Future[tuple[RecordOutcome, list[_Dead]]]]] = deque()
        for start in range(0, len(messages), size):
            prepared = self._prepare(messages[start : start + size], now, seen)
            # Hand the chunk to a database worker; fan out the oldest once enough are queued.
            in_flight.append((prepared, self._db.submit(self._record_isolating, prepared.accepted, now)))
            if len(in_flight) > depth:
                self._fan_out(*in_flight.popleft(), tracker, summary)
        while in_flight:
            self._fan_out(*in_flight.popleft(), tracker, summary)
        started = time.monotonic()
        tracker.wait()
        for published in summary.publishing:  # each delivered before its locks went
            published.result()
        metrics.PRODUCE_SECONDS.labels(SERVICE).observe(time.monotonic() - started)
        self._count(len(messages), summary)

    def _prepare(self, messages: Sequence[Message], now: datetime, seen: dict[str, _Accepted]) -> _Prepared:
        """Decode and validate, enrich from the customer directory (one query for the chunk),
        plan; dedupe within the batch."""
        prepared = _Prepared()
        decoded: list[tuple[Message, OptOutRequest]] = []
        codec, skew, region, destinations = self.codec, self._skew, self._region, self._destinations
        for message in messages:
            try:
                decoded.append((message, decode_request(codec, message.value(), now, skew, region)))
            except PoisonMessage as poison:
                prepared.dead.append((message, poison))
        enriched = self._directory.enrich([request for _, request in decoded])
        for (message, _), request in zip(decoded, enriched, strict=True):
            try:
                item = _Accepted(message, request, plan_commands(request, now, destinations))
            except PoisonMessage as poison:
                prepared.dead.append((message, poison))
                continue
            first = seen.get(request.event_id)
            if first is None:
                seen[request.event_id] = item
                prepared.accepted.append(item)
            elif first.request.content_sha256 == request.content_sha256:
                prepared.in_batch_duplicates += 1
            else:
                prepared.dead.append(
                    (
                        message,
                        PoisonMessage("duplicate_event_id_conflict", "same event_id, different content"),
                    )
                )
        return prepared

    def _fan_out(
        self,
        prepared: _Prepared,
        recorded: Future[tuple[RecordOutcome, list[_Dead]]],
        tracker: DeliveryTracker,
        summary: _Summary,
    ) -> None:
        """Once a chunk is committed: produce its commands and dead letters."""
        outcome, rejected = recorded.result()
        dead = prepared.dead + rejected
        for item in prepared.accepted:
            event_id = item.request.event_id
            if event_id in outcome.conflicts:
                dead.append(
                    (
                        item.message,
                        PoisonMessage(
                            "duplicate_event_id_conflict", "event_id already recorded with different content"
                        ),
                    )
                )
                continue
            for command in item.commands:
                if command.command_id in outcome.withheld:
                    continue  # the request did not take effect for its scopes (newest wins)
                if event_id in outcome.new or command.command_id in outcome.resend:
                    self._send_command(tracker, command)
                    summary.commands += 1
        if outcome.states:
            summary.publishing.append(self._states_pool.submit(self._publish_states, outcome.states))
        for message, why in dead:
            dead_letter(tracker, self.settings.requests_dlq_topic, message, why.reason, why.detail, SERVICE)
            metrics.DEAD_LETTERED.labels(SERVICE, why.reason).inc()
            log.debug(
                "dead-lettered",
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
                reason=why.reason,
            )
        summary.new += len(outcome.new)
        summary.superseded += len(outcome.superseded)
        if outcome.superseded:
            for item in prepared.accepted:
                if item.request.event_id in outcome.superseded:
                    SUPERSEDED.labels(item.request.action.value).inc()
        summary.duplicates += len(outcome.duplicates) + prepared.in_batch_duplicates
        summary.dead += len(dead)

    # --- internals --------------------------------------------------------------------
    def _record_isolating(self, items: list[_Accepted], now: Any) -> tuple[RecordOutcome, list[_Dead]]:
        """Record the batch; if the database refuses it for a data reason (not a transient
        one), record the items one by one so only the offending message is dead-lettered."""
        try:
            return self._record(items, now), []
        except _DataRejected:
            pass
        total = RecordOutcome()
        rejected = []
        for item in items:
            try:
                one = self._record([item], now)
            except _DataRejected as exc:
                rejected.append((item.message, PoisonMessage("database_rejected", str(exc))))
                continue
            total.new |= one.new
            total.duplicates |= one.duplicates
            total.conflicts |= one.conflicts
            total.resend |= one.resend
            total.withheld |= one.withheld
            total.superseded |= one.superseded
            total.states |= one.states
        return total, rejected

    def _record_in_database(
        self, requests: list[OptOutRequest], commands: dict[str, list[PlannedCommand]], now: datetime
    ) -> RecordOutcome:
        worker = threading.get_ident()
        held = self._conns.get(worker)
        if held is None or held[1] != self._epoch:
            if held is not None:
                held[0].close()  # opened before the last failure: maybe terminated since
            held = self._conns[worker] = (
                LazyConnection(
                    self.settings.dsn(), prepared_statements=self.settings.database_prepared_statements
                ),
                self._epoch,
            )
        return held[0].run(lambda c: record_batch(c, requests, commands, now, self._ring))

    def _record(self, items: list[_Accepted], now: Any) -> RecordOutcome:
        started = time.monotonic()
        requests = [i.request for i in items]
        commands = {i.request.event_id: i.commands for i in items}
        try:
            outcome = self._recorder(requests, commands, now)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise _DataRejected(first_line(exc)) from exc
        metrics.DB_SECONDS.labels(SERVICE, "record_batch").observe(time.monotonic() - started)
        return outcome

    def _publish_states(self, subjects: set[str]) -> int:
        """On the states thread, once a chunk has committed: the current state of every
        subject it changed, to the compacted topic optout.suppressions, under the subjects'
        locks until delivered (``services.intake.states``). A subject two chunks of a batch
        changed is published after each commit: the later read sees both."""
        if self._states_db is None or self._states_db[1] != self._epoch:
            if self._states_db is not None:
                self._states_db[0].close()  # opened before the last failure (see _conns)
            self._states_db = (
                LazyConnection(
                    self.settings.dsn(),
                    autocommit=True,
                    prepared_statements=self.settings.database_prepared_statements,
                ),
                self._epoch,
            )
        published = publish_current_states(
            self._states_db[0],
            DeliveryTracker(self._states_producer),
            self.codec,
            self._states_topic,
            subjects,
            self.clock.now(),
        )
        STATES_PUBLISHED.inc(published)
        return published

    def _send_command(self, tracker: DeliveryTracker, command: PlannedCommand) -> None:
        topic = self._command_topics.get(command.destination)
        if topic is None:  # the settings build the name anew on every call
            topic = self._command_topics[command.destination] = self.settings.suppress_topic(
                command.destination
            )
        tracker.produce(
            topic,
            value=self.codec.encode("SuppressionCommand", command.record),
            key=command.record["request_id"],
        )

    def _count(self, messages: int, summary: _Summary) -> None:
        topic = self._topic
        metrics.MESSAGES_CONSUMED.labels(SERVICE, topic, "processed").inc(summary.new)
        metrics.MESSAGES_CONSUMED.labels(SERVICE, topic, "duplicate").inc(summary.duplicates)
        metrics.MESSAGES_CONSUMED.labels(SERVICE, topic, "dead_lettered").inc(summary.dead)
        log.info(
            "batch recorded",
            messages=messages,
            new=summary.new,
            duplicates=summary.duplicates,
            dead_lettered=summary.dead,
            commands=summary.commands,
            superseded=summary.superseded,
        )
