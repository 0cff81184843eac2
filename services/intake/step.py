"""The intake step: decode -> validate -> record (one transaction) -> fan out -> DLQ.

``submit`` returns only once the batch's requests are committed in PostgreSQL and
every command and dead letter of the batch has a successful delivery report; the
consume loop then commits the offsets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from confluent_kafka import Message, Producer

from services.common import metrics
from services.common.avro import Codec
from services.common.clock import Clock
from services.common.db import connect, first_line
from services.common.errors import PoisonMessage, RetriableError
from services.common.kafka import DeliveryTracker, dead_letter
from services.common.logging import get_logger
from services.common.settings import Settings
from services.intake.planning import PlannedCommand, plan_commands
from services.intake.store import RecordOutcome, record_batch
from services.intake.validation import OptOutRequest, decode_request

log = get_logger(__name__)
SERVICE = "intake"


class _DataRejected(Exception):
    """The database refused the data itself (not a transient failure)."""


@dataclass
class _Accepted:
    message: Message
    request: OptOutRequest
    commands: list[PlannedCommand]


class IntakeStep:
    def __init__(self, settings: Settings, producer: Producer, codec: Codec, clock: Clock) -> None:
        self.settings = settings
        self.producer = producer
        self.codec = codec
        self.clock = clock
        self._conn: psycopg.Connection[Any] | None = None
        self._skew = timedelta(seconds=settings.clock_skew_seconds)
        self._topic = settings.requests_topic
        for d in ("processed", "duplicate", "dead_lettered"):
            metrics.MESSAGES_CONSUMED.labels(SERVICE, self._topic, d)

    # --- Step interface ---------------------------------------------------------------
    def poll(self) -> None:
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(10)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def submit(self, messages: Sequence[Message]) -> None:
        now = self.clock.now()
        accepted: dict[str, _Accepted] = {}
        in_batch_duplicates: list[_Accepted] = []
        dead: list[tuple[Message, PoisonMessage]] = []
        for message in messages:
            try:
                request = decode_request(self.codec, message.value(), now, self._skew,
                                         self.settings.default_phone_region)
                item = _Accepted(message, request, plan_commands(request, now))
            except PoisonMessage as poison:
                dead.append((message, poison))
                continue
            first = accepted.get(request.event_id)
            if first is None:
                accepted[request.event_id] = item
            elif first.request.content_sha256 == request.content_sha256:
                in_batch_duplicates.append(item)
            else:
                dead.append((message, PoisonMessage(
                    "duplicate_event_id_conflict", "same event_id, different content")))

        outcome, rejected = self._record_isolating(list(accepted.values()), now)
        dead.extend(rejected)
        tracker = DeliveryTracker(self.producer)
        produced = 0
        for event_id, item in accepted.items():
            if event_id in outcome.conflicts:
                dead.append((item.message, PoisonMessage(
                    "duplicate_event_id_conflict",
                    "event_id already recorded with different content")))
                continue
            for command in item.commands:
                if event_id in outcome.new or command.command_id in outcome.resend:
                    self._send_command(tracker, command)
                    produced += 1
        for message, why in dead:
            dead_letter(tracker, self.settings.requests_dlq_topic, message, why.reason,
                        why.detail, SERVICE)
        started = time.monotonic()
        tracker.wait()
        metrics.PRODUCE_SECONDS.labels(SERVICE).observe(time.monotonic() - started)
        self._count(messages, outcome, dead, in_batch_duplicates, produced)

    # --- internals --------------------------------------------------------------------
    def _record_isolating(
        self, items: list[_Accepted], now: Any
    ) -> tuple[RecordOutcome, list[tuple[Message, PoisonMessage]]]:
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
        return total, rejected

    def _record(self, items: list[_Accepted], now: Any) -> RecordOutcome:
        started = time.monotonic()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.settings.dsn())
            outcome = record_batch(
                self._conn, [i.request for i in items],
                {i.request.event_id: i.commands for i in items}, now,
            )
        except psycopg.OperationalError as exc:
            self._drop_connection()
            raise RetriableError(f"database error: {first_line(exc)}") from exc
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
            raise RetriableError(f"database conflict: {first_line(exc)}") from exc
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise _DataRejected(first_line(exc)) from exc
        metrics.DB_SECONDS.labels(SERVICE, "record_batch").observe(time.monotonic() - started)
        return outcome

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _send_command(self, tracker: DeliveryTracker, command: PlannedCommand) -> None:
        tracker.produce(
            self.settings.suppress_topic(command.destination),
            value=self.codec.encode("SuppressionCommand", command.record),
            key=command.record["request_id"],
        )

    def _count(
        self, messages: Sequence[Message], outcome: RecordOutcome,
        dead: list[tuple[Message, PoisonMessage]], in_batch_duplicates: list[_Accepted],
        produced: int,
    ) -> None:
        topic = self._topic
        for _, reason in dead:
            metrics.DEAD_LETTERED.labels(SERVICE, reason.reason).inc()
        duplicates = len(outcome.duplicates) + len(in_batch_duplicates)
        metrics.MESSAGES_CONSUMED.labels(SERVICE, topic, "processed").inc(len(outcome.new))
        metrics.MESSAGES_CONSUMED.labels(SERVICE, topic, "duplicate").inc(duplicates)
        metrics.MESSAGES_CONSUMED.labels(SERVICE, topic, "dead_lettered").inc(len(dead))
        log.info(
            "batch recorded", messages=len(messages), new=len(outcome.new), duplicates=duplicates,
            dead_lettered=len(dead), commands=produced,
            partitions=sorted({m.partition() for m in messages}),
        )
        for message, why in dead:
            log.debug("dead-lettered", topic=message.topic(), partition=message.partition(),
                      offset=message.offset(), reason=why.reason)
