"""The deadlines sweeper: re-sends unacknowledged commands and marks overdue requests.

It runs inside the confirmer's ``poll()`` every ``sweep_interval_seconds`` (measured
on the injected clock). One sweep, in one transaction:

* picks at most ``sweep_batch_size`` PENDING destination rows whose next re-send is
  due: ``last_issued_at + reissue_interval(issue_count) <= now``, where the interval
  grows ``base * 2**(issue_count - 1)`` up to ``cap``. ``FOR UPDATE SKIP LOCKED`` lets
  several confirmer instances share the work without sending a command twice;
* rebuilds each SuppressionCommand with intake's own planning (same ``command_id``,
  new ``issued_at``), publishes it, waits for every delivery report, and only then
  bumps ``issue_count``/``last_issued_at`` and commits. A crash in between means the
  command is sent once more later (connectors dedupe by ``command_id``), never lost;
* marks requests that are past ``due_at`` and not confirmed (``overdue_at``), once each;
* refreshes the needs-attention gauge.

Only destinations the contract knows are selected: pending commands of a destination
that no longer exists (a connector retired while commands waited) can never be re-sent,
and would otherwise fill every batch and starve the others. They are counted per
destination instead (``optout_pending_commands_unknown_destination``), and logged once
per destination and process.

Database access goes through the confirmer's one ``LazyConnection``: transient failures
become ``RetriableError`` and a dropped connection is reopened by the next sweep.

A full batch schedules the next sweep immediately, so a backlog drains over
consecutive polls without blocking the consume loop for long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import Gauge

from services.common import metrics
from services.common.audit import AuditEvent, Step, append
from services.common.avro import Codec
from services.common.clock import Clock
from services.common.contract import Action, Scope, Source
from services.common.db import LazyConnection
from services.common.errors import RetriableError
from services.common.kafka import DeliveryTracker
from services.common.logging import get_logger
from services.common.renewable_producer import Producing
from services.common.settings import Settings
from services.domain.enrichment import Enrichment
from services.domain.planning import commands_for
from services.domain.validation import OptOutRequest

log = get_logger(__name__)
SERVICE = "confirmer"
MAX_EXPONENT = 40

UNKNOWN_DESTINATION_COMMANDS = Gauge(
    "optout_pending_commands_unknown_destination",
    "Pending commands of a destination the contract no longer has: never re-sent, never "
    "acknowledged; resolve them by hand.",
    ["destination"],
)


def reissue_interval(issue_count: int, base_seconds: float, cap_seconds: float) -> timedelta:
    """How long after its last send a command that was sent ``issue_count`` times is re-sent."""
    exponent = min(max(issue_count - 1, 0), MAX_EXPONENT)
    return timedelta(seconds=min(cap_seconds, base_seconds * 2**exponent))


def next_reissue_at(
    last_issued_at: datetime, issue_count: int, base_seconds: float, cap_seconds: float
) -> datetime:
    return last_issued_at + reissue_interval(issue_count, base_seconds, cap_seconds)


class SweepSchedule:
    """When the next sweep is due, on the injected clock's monotonic scale."""

    def __init__(self, clock: Clock, every_seconds: float) -> None:
        self.clock = clock
        self.every = every_seconds
        self._next = clock.monotonic()  # the first poll sweeps

    def due(self) -> bool:
        return self.clock.monotonic() >= self._next

    def done(self, more_waiting: bool) -> None:
        self._next = self.clock.monotonic() + (0.0 if more_waiting else self.every)


@dataclass
class SweepResult:
    reissued: list[tuple[str, str, int]] = field(default_factory=list)  # (command, dest, new count)
    newly_overdue: list[str] = field(default_factory=list)  # event ids
    needing_attention: int = 0
    unknown_destinations: dict[str, int] = field(default_factory=dict)  # destination -> pending


_DUE_COMMANDS = """
SELECT d.command_id, d.destination, d.issue_count,
       r.event_id, r.customer_id, r.email, r.phone, r.postal_address, r.email_sha256,
       r.phone_sha256, r.scopes, r.source, r.jurisdiction, r.requested_at, r.due_at,
       r.deadline_rule, r.subject_key, r.content_sha256, r.action, r.device_id,
       r.directory_identifiers
FROM destination_status d JOIN requests r ON r.event_id = d.event_id
WHERE d.status = 'PENDING'
  AND r.resolved_at IS NULL  -- resolved by a person (optout resolve): closed, never re-sent
  AND d.destination = ANY(%(known)s)
  AND d.last_issued_at <= %(earliest)s
  AND d.last_issued_at + make_interval(secs => least(
        %(cap)s, %(base)s * power(2, least(greatest(d.issue_count - 1, 0), %(max_exp)s))
      )) <= %(now)s
ORDER BY d.last_issued_at
LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED
"""

_MARK_REISSUED = """
UPDATE destination_status SET last_issued_at = %s, issue_count = issue_count + 1
WHERE command_id = ANY(%s)
RETURNING command_id, issue_count
"""

_MARK_OVERDUE = """
UPDATE requests SET overdue_at = %(now)s
WHERE event_id IN (
    SELECT event_id FROM requests
    WHERE state <> 'CONFIRMED' AND overdue_at IS NULL AND resolved_at IS NULL AND due_at <= %(now)s
    ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING event_id, deadline_rule
"""

_NEEDING_ATTENTION = "SELECT count(*) FROM requests WHERE state = 'NEEDS_ATTENTION' AND resolved_at IS NULL"

_UNKNOWN_DESTINATIONS = """
SELECT destination, count(*) FROM destination_status
WHERE status = 'PENDING' AND NOT (destination = ANY(%(known)s))
GROUP BY destination
"""


def request_from_row(row: tuple[Any, ...]) -> OptOutRequest:
    """The stored request (columns 3.. of ``_DUE_COMMANDS``) as intake's ``OptOutRequest``,
    with what the customer directory added (column ``directory_identifiers``, if selected)."""
    enrichment = Enrichment.from_stored(row[17]) if len(row) > 17 else None
    (
        event_id,
        customer_id,
        email,
        phone,
        postal_address,
        email_sha256,
        phone_sha256,
        scopes,
        source,
        jurisdiction,
        requested_at,
        due_at,
        deadline_rule,
        subject_key,
        content_sha256,
        action,
        device_id,
    ) = row[:17]
    return OptOutRequest(
        event_id=event_id,
        customer_id=customer_id,
        email=email,
        phone=phone,
        postal_address=postal_address,
        email_sha256=email_sha256,
        phone_sha256=phone_sha256,
        scopes=tuple(Scope(s) for s in scopes),
        source=Source(source),
        jurisdiction=jurisdiction,
        requested_at=requested_at,
        due_at=due_at,
        deadline_rule=deadline_rule,
        subject_key=subject_key,
        content_sha256=content_sha256,
        enrichment=enrichment,
        action=Action(action),
        device_id=device_id,
    )


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        producer: Producing,
        codec: Codec,
        clock: Clock,
        db: LazyConnection,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.codec = codec
        self.clock = clock
        self.db = db
        self.schedule = SweepSchedule(clock, settings.sweep_interval_seconds)
        self._reported_unknown: set[str] = set()
        metrics.RETRIES.labels(SERVICE, "sweep")

    def maybe_sweep(self) -> SweepResult | None:
        """Sweep if one is due. A failed sweep is logged and tried again next interval."""
        if not self.schedule.due():
            return None
        try:
            result, more = self.sweep()
        except RetriableError as exc:
            metrics.RETRIES.labels(SERVICE, "sweep").inc()
            log.warning(
                "sweep failed; will try again",
                error=str(exc),
                retry_in_seconds=self.settings.sweep_interval_seconds,
            )
            self.schedule.done(more_waiting=False)
            return None
        self.schedule.done(more_waiting=more)
        return result

    def sweep(self) -> tuple[SweepResult, bool]:
        """One sweep; returns the result and whether more re-sends are already waiting."""
        now = self.clock.now()
        limit = self.settings.sweep_batch_size
        base, cap = self.settings.reissue_base_seconds, self.settings.reissue_cap_seconds
        result = SweepResult()
        started = time.monotonic()
        params = {
            "earliest": now - timedelta(seconds=min(base, cap)),
            "now": now,
            "base": base,
            "cap": cap,
            "max_exp": MAX_EXPONENT,
            "limit": limit,
            "known": self.settings.destinations.names,
        }

        def work(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_DUE_COMMANDS, params)
                due = cur.fetchall()
                sent = self._resend(due, now)
                if sent:
                    cur.execute(_MARK_REISSUED, (now, sent))
                    counts = dict(cur.fetchall())
                    result.reissued = [(row[0], row[1], counts[row[0]]) for row in due if row[0] in counts]
                    append(
                        cur,
                        [
                            AuditEvent(
                                row[3],
                                now,
                                Step.COMMAND_RESENT,
                                destination=row[1],
                                detail=f"{row[0]} issue {counts[row[0]]}",
                            )
                            for row in due
                            if row[0] in counts
                        ],
                    )
                cur.execute(_MARK_OVERDUE, {"now": now, "limit": limit})
                overdue = cur.fetchall()
                result.newly_overdue = [r[0] for r in overdue]
                cur.execute(_NEEDING_ATTENTION)
                counted = cur.fetchone()
                result.needing_attention = int(counted[0]) if counted else 0
                cur.execute(_UNKNOWN_DESTINATIONS, params)
                result.unknown_destinations = {str(r[0]): int(r[1]) for r in cur.fetchall()}
            return due, overdue

        due, overdue = self.db.run(work)
        metrics.DB_SECONDS.labels(SERVICE, "sweep").observe(time.monotonic() - started)
        metrics.REQUESTS_NEEDING_ATTENTION.set(result.needing_attention)
        self._report_unknown(result.unknown_destinations)
        for event_id, rule in overdue:
            log.warning("request overdue", request_id=event_id, deadline_rule=rule)
        if result.reissued or result.newly_overdue:
            log.info(
                "swept",
                reissued=len(result.reissued),
                newly_overdue=len(result.newly_overdue),
                needing_attention=result.needing_attention,
            )
        return result, len(due) >= limit or len(overdue) >= limit

    def _report_unknown(self, pending: dict[str, int]) -> None:
        """Gauge every unknown destination's pending commands; log each destination once."""
        for destination in self._reported_unknown - set(pending):
            UNKNOWN_DESTINATION_COMMANDS.labels(destination).set(0)
        for destination, count in sorted(pending.items()):
            UNKNOWN_DESTINATION_COMMANDS.labels(destination).set(count)
            if destination not in self._reported_unknown:
                log.warning(
                    "pending commands for a destination that no longer exists; they are never "
                    "re-sent: resolve them by hand (optout status) or restore the destination",
                    destination=destination,
                    pending=count,
                )
        self._reported_unknown |= set(pending)

    def _resend(self, due: list[tuple[Any, ...]], now: datetime) -> list[str]:
        """Publish the due commands again; return their ids once every one is delivered."""
        if not due:
            return []
        tracker = DeliveryTracker(self.producer)
        sent: list[str] = []
        per_topic: dict[str, int] = {}
        for row in due:
            command, destination_id = row[0], row[1]
            dest = self.settings.destinations.get(destination_id)
            if dest is None:
                log.warning(
                    "pending command for an unknown destination; not re-sent",
                    command_id=command,
                    destination=destination_id,
                )
                continue
            # The command with this id: one of the request's commands for the destination
            # (several when the customer directory added identifiers, planning.commands_for).
            planned = next(
                (c for c in commands_for(request_from_row(row[3:]), dest, now) if c.command_id == command),
                None,
            )
            if planned is None:
                log.warning(
                    "pending command no longer planned for its request; not re-sent",
                    command_id=command,
                    destination=destination_id,
                )
                continue
            topic = self.settings.suppress_topic(dest.id)
            tracker.produce(
                topic,
                value=self.codec.encode("SuppressionCommand", planned.record),
                key=planned.record["request_id"],
            )
            sent.append(planned.command_id)
            per_topic[topic] = per_topic.get(topic, 0) + 1
        tracker.wait()
        for topic, count in per_topic.items():
            metrics.MESSAGES_PRODUCED.labels(SERVICE, topic).inc(count)
        return sent
