"""The confirmer step: decode acks -> record them -> confirm completed requests -> DLQ.

Never skipping a confirmation (the crash-safety invariant)
-----------------------------------------------------------
The acks of a batch, the requests' new states and the confirmations they cause are
one unit: ``submit`` opens a database transaction, records the acks, produces one
OptOutConfirmed per request that has just become complete, **waits for every
delivery report, and only then commits**. The consume loop commits the offsets after
``submit`` returns. So, wherever the process dies:

* before the commit: nothing is recorded and the offsets are not committed; the acks
  are redelivered and the confirmation is produced (again, if it already went out);
* after the commit: the confirmation was already delivered.

A failed delivery raises ``RetriableError`` inside the transaction, which rolls it back,
and the loop retries the batch. A confirmation can therefore be sent twice after a
crash but never skipped; ``request_id`` is the notice's idempotency key for the
notifier downstream. In the normal path a request is confirmed once, because a request
that is already ``CONFIRMED`` is never confirmed again.

Dead letters (to ``optout.acks.dlq``, via ``dead_letter``): ``undecodable`` etc. from
the codec, ``invalid_ack``, ``unknown_command`` (no such command_id) and
``ack_mismatch`` (request or destination differ from the command's).

Acks of commands ``optout reconcile`` re-issued (request id ``reconcile:...``,
``services.common.contract.is_reconcile_request``) are skipped: no customer request is
behind them, so nothing is recorded, confirmed or dead-lettered (their outcome stays in the
connector's ``connector_applied``). They are counted as consumed with outcome ``ignored``.
Their acks, and those of replayed commands, are written into the audit trail of the requests
whose suppression the command carries (``services.common.audit.record_reissue_acks``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Message

from services.common import audit, metrics
from services.common.avro import Codec
from services.common.clock import Clock
from services.common.contract import is_reconcile_request, is_replay_request
from services.common.db import LazyConnection
from services.common.errors import PoisonMessage
from services.common.kafka import DeliveryTracker, dead_letter
from services.common.logging import get_logger
from services.common.renewable_producer import Producing
from services.common.settings import Settings
from services.confirmer.outcomes import Ack, decode_ack
from services.confirmer.store import AckOutcome, apply_acks
from services.confirmer.sweeper import SERVICE, Sweeper

log = get_logger(__name__)


# Records a batch of acks inside the caller's transaction (``store.apply_acks``).
AckRecorder = Callable[[psycopg.Connection[Any], Sequence[Ack], datetime], AckOutcome]


class ConfirmerStep:
    def __init__(
        self,
        settings: Settings,
        producer: Producing,
        codec: Codec,
        clock: Clock,
        db: LazyConnection | None = None,
        record_acks: AckRecorder = apply_acks,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.codec = codec
        self.clock = clock
        self.db = db or LazyConnection(
            settings.dsn(), prepared_statements=settings.database_prepared_statements
        )
        self._record_acks = record_acks
        self.sweeper = Sweeper(settings, producer, codec, clock, self.db)
        self._topic = settings.acks_topic
        # Bound once (``labels()`` looks the child up on every call; issue #15: per batch).
        self._consumed = {
            outcome: metrics.MESSAGES_CONSUMED.labels(SERVICE, self._topic, outcome)
            for outcome in metrics.CONSUME_OUTCOMES
        }
        self._produced = metrics.MESSAGES_PRODUCED.labels(SERVICE, settings.confirmations_topic)
        self._db_seconds = metrics.DB_SECONDS.labels(SERVICE, "apply_acks")
        self._produce_seconds = metrics.PRODUCE_SECONDS.labels(SERVICE)
        for reason in ("unknown_command", "ack_mismatch", "invalid_ack", "undecodable"):
            metrics.DEAD_LETTERED.labels(SERVICE, reason)

    # --- Step interface ---------------------------------------------------------------
    def poll(self) -> None:
        self.producer.poll(0)
        self.sweeper.maybe_sweep()

    def close(self) -> None:
        self.producer.flush(10)
        self.db.close()

    def submit(self, messages: Sequence[Message]) -> None:
        acks: list[tuple[Message, Ack]] = []
        dead: list[tuple[Message, PoisonMessage]] = []
        ignored = 0
        reissued: list[Ack] = []  # acks of reconcile and replay commands (services/common/audit.py)
        for message in messages:
            try:
                ack = decode_ack(self.codec, message.value())
            except PoisonMessage as poison:
                dead.append((message, poison))
                continue
            if is_reconcile_request(ack.request_id):
                ignored += 1  # a reconcile re-issue: no request to record or confirm
                reissued.append(ack)  # but the audit trail of the requests it re-sent
            else:
                acks.append((message, ack))
                if is_replay_request(ack.request_id):
                    reissued.append(ack)
        if ignored:
            metrics.MESSAGES_CONSUMED.labels(SERVICE, self._topic, "ignored").inc(ignored)
        now = self.clock.now()
        tracker = DeliveryTracker(self.producer)
        started = time.monotonic()

        def work(conn: psycopg.Connection[Any]) -> AckOutcome:
            # Pipeline mode: BEGIN and the reads go in one round trip, the writes in another
            # (the sync below: their errors surface before anything is produced), the COMMIT
            # in a third (seven before; issue #15).
            with conn.pipeline() as pipeline, conn.transaction():
                outcome = self._record_acks(conn, [ack for _, ack in acks], now)
                audit.record_reissue_acks(
                    conn, [(a.command_id, a.destination, a.status.value, a.detail) for a in reissued], now
                )
                pipeline.sync()
                self._db_seconds.observe(time.monotonic() - started)
                dead.extend(self._rejected(acks, outcome))
                for record in outcome.confirmations:
                    tracker.produce(
                        self.settings.confirmations_topic,
                        value=self.codec.encode("OptOutConfirmed", record),
                        key=record["request_id"],
                    )
                for message, why in dead:
                    dead_letter(
                        tracker, self.settings.acks_dlq_topic, message, why.reason, why.detail, SERVICE
                    )
                produce_started = time.monotonic()
                tracker.wait()  # before the commit: see the module docstring
                self._produce_seconds.observe(time.monotonic() - produce_started)
            return outcome

        # Transient database errors become RetriableError; a dropped connection is reopened.
        outcome = self.db.run(work)
        for record in outcome.confirmations:
            metrics.observe_confirmation(record["requested_at"], record["confirmed_at"])
        self._count(messages, outcome, dead)

    # --- internals --------------------------------------------------------------------
    @staticmethod
    def _rejected(
        acks: list[tuple[Message, Ack]], outcome: AckOutcome
    ) -> list[tuple[Message, PoisonMessage]]:
        rejected = []
        for message, ack in acks:
            if ack.command_id in outcome.unknown:
                rejected.append(
                    (message, PoisonMessage("unknown_command", f"no command {ack.command_id} is recorded"))
                )
            elif ack.command_id in outcome.mismatched:
                rejected.append((message, PoisonMessage("ack_mismatch", outcome.mismatched[ack.command_id])))
        return rejected

    def _count(
        self,
        messages: Sequence[Message],
        outcome: AckOutcome,
        dead: list[tuple[Message, PoisonMessage]],
    ) -> None:
        for _, poison in dead:
            metrics.DEAD_LETTERED.labels(SERVICE, poison.reason).inc()
        self._consumed["processed"].inc(len(outcome.changed) + outcome.replayed)
        self._consumed["duplicate"].inc(outcome.unchanged)
        self._consumed["dead_lettered"].inc(len(dead))
        self._produced.inc(len(outcome.confirmations))
        log.info(
            "acks recorded",
            messages=len(messages),
            changed=len(outcome.changed),
            unchanged=outcome.unchanged,
            confirmed=len(outcome.confirmations),
            replayed=outcome.replayed,
            needs_attention=len(outcome.needs_attention),
            dead_lettered=len(dead),
        )
        for event_id in sorted(outcome.needs_attention):
            log.warning("request needs attention: a destination refused it", request_id=event_id)
        for message, poison in dead:
            log.debug(
                "dead-lettered",
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
                reason=poison.reason,
            )
