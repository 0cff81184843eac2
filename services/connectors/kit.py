"""The connector kit: a destination is one small ``Connector`` class; this module makes it
reliable.

A connector says what applying a batch of SuppressionCommands to its system means::

    class MyConnector(Connector):
        destination = "my_system"

        def apply(self, commands: Sequence[Command]) -> list[Outcome]:
            ...  # one Outcome per command; raise RetriableError(retry_after=...) if transient

``ConnectorStep`` (a ``ConsumerLoop`` step) does the rest: decode (unreadable or
misrouted messages go to the destination's DLQ), dedupe by ``command_id`` against the
PostgreSQL store (a re-sent command is acknowledged again, not re-applied), call
``apply`` once for the commands without a stored outcome, record the outcomes, publish one
SuppressionAck per delivered command to ``optout.acks`` (key = request_id) and return
only when every ack is delivered, so the loop commits offsets after the acks and never
before. A transient failure is raised to the loop after recording what was finished: the
loop retries the batch with exponential backoff and full jitter, never sooner than a
provider's Retry-After (``connector_backoff``), while its consumer stays in the group
(paused, polling, heartbeating); the retried batch finds the finished commands in the
store and applies only the rest. Nothing is lost or falsely acknowledged. The exact
ordering and its reasons are in ``services.connectors.dedupe``.

A connector may also return outcomes for some commands only (the rest are retried), or
raise ``IncompleteBatch(outcomes, cause)`` to keep the progress it made before a
transient failure.

**Newest wins at the destination** (opting back in, docs/contract.md): the step records, per
destination and person (each pseudonymous identifier the command carries: ``cust:``,
``email_sha256:``, ``phone_sha256:``, ``postal:``, ``device_sha256:``), the newest request it
applied (table ``connector_latest``). A fresh command older than that for one of its
identifiers (ranked by ``requested_at``, then opt-out before opt-in, then request id; see
``services.domain.preferences``), or older than another command of the same batch for the same
person, is acknowledged without calling the destination: a late opt-in never undoes a newer
opt-out, nor a late opt-out a newer opt-in. It is acknowledged ``ALREADY_SUPPRESSED`` when the
newer request is an opt-out, else ``APPLIED``, with the detail ``superseded``. Version-1
commands (``requested_at`` 0) always apply.

A destination that confirms later (a mail house's import receipt) returns ``Awaiting(id)``
for a command it handed over: no ack and no retry now (the offset is committed, the
command stays PENDING at the confirmer); the step calls the connector's ``settle()`` on
every loop poll and records and acknowledges the outcomes it reports; a command never
confirmed is re-sent by the confirmer's sweeper and reaches ``apply`` again.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Message
from prometheus_client import Counter, Gauge, Histogram

from services.common import metrics
from services.common.avro import Codec, default_codec
from services.common.clock import Clock, SystemClock, to_millis
from services.common.consumer_loop import Backoff, ConsumerLoop
from services.common.contract import AckStatus, Action
from services.common.errors import PoisonMessage, RetriableError
from services.common.gc_tuning import collect_young, tune_gc
from services.common.kafka import DeliveryTracker, dead_letter, make_producer
from services.common.logging import get_logger
from services.common.records import (
    PostalAddressRecord,
    SuppressionAckRecord,
    SuppressionCommandRecord,
    as_datetime,
    decode_suppression_command,
)
from services.common.renewable_producer import Producing, RenewableProducer
from services.common.settings import CONNECTOR_BATCH_LINGER_MS, Settings
from services.connectors.dedupe import DedupeStore, Latest, StoredOutcome, first_of_each
from services.domain.identity import sha256_hex
from services.domain.validation import postal_key
from services.observability.health import HEALTH, HealthState
from services.observability.loop import observe_loop

log = get_logger(__name__)

OUTCOMES = Counter(
    "optout_connector_outcomes_total",
    "Acknowledgements published by connectors, by status and whether apply() ran (applied) "
    "or the stored outcome answered a re-sent command (stored).",
    ["destination", "status", "source"],
)
APPLY_SECONDS = Histogram(
    "optout_connector_apply_seconds",
    "Time in one apply() call.",
    ["destination"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SUPERSEDED_COMMANDS = Counter(
    "optout_connector_superseded_total",
    "Commands acknowledged without calling the destination because a newer request for the "
    "same person was applied there (newest wins), by action.",
    ["destination", "action"],
)
CREDENTIALS_REFUSED = Gauge(
    "optout_connector_credentials_refused",
    "1 while the destination refuses our credentials (HTTP 401/403, a changed host key): "
    "its partitions are paused and it retries by itself; 0 once a call works again.",
    ["destination"],
)


# --- what connectors see -------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """A decoded SuppressionCommand."""

    command_id: str
    request_id: str
    destination: str
    customer_id: str | None
    email: str | None
    phone: str | None
    postal_address: PostalAddressRecord | None
    email_sha256: str | None
    phone_sha256: str | None
    scopes: tuple[str, ...]
    issued_at: datetime
    deadline: datetime
    action: Action = Action.OPT_OUT  # OPT_IN: un-suppress (schema version 2)
    requested_at: datetime | None = None  # None in version-1 commands (written as 0)
    device_id: str | None = None

    @property
    def opt_in(self) -> bool:
        return self.action is Action.OPT_IN

    @property
    def rank(self) -> tuple[datetime, bool, str] | None:
        """Newest first; on the same instant the opt-out; None: unknown (version 1)."""
        if self.requested_at is None:
            return None
        return (self.requested_at, self.action is Action.OPT_OUT, self.request_id)

    def subjects(self) -> tuple[str, ...]:
        """The person's pseudonymous identifiers this command carries (as subject keys).
        Computed once per command: a batch asks for them 4-5 times (locks, newest-applied read,
        the supersede check, the record), each a SHA-256 of some identifiers (issue #15); kept
        in the instance's ``__dict__`` (not a field: equality and ``replace`` ignore it)."""
        cached: tuple[str, ...] | None = self.__dict__.get("_subject_keys")
        if cached is None:
            cached = self._find_subjects()
            object.__setattr__(self, "_subject_keys", cached)
        return cached

    def _find_subjects(self) -> tuple[str, ...]:
        found: set[str] = set()
        if self.customer_id:
            found.add(f"cust:{self.customer_id}")
        email_hash = self.email_sha256 or (sha256_hex(self.email) if self.email else None)
        if email_hash:
            found.add(f"email_sha256:{email_hash}")
        phone_hash = self.phone_sha256 or (sha256_hex(self.phone) if self.phone else None)
        if phone_hash:
            found.add(f"phone_sha256:{phone_hash}")
        address = postal_key(self.postal_address)
        if address is not None:
            found.add(f"postal:{sha256_hex(address)}")
        if self.device_id:
            found.add(f"device_sha256:{sha256_hex(self.device_id)}")
        return tuple(sorted(found))

    @classmethod
    def from_record(cls, record: SuppressionCommandRecord) -> Command:
        return cls(
            command_id=record["command_id"],
            request_id=record["request_id"],
            destination=record["destination"],
            customer_id=record["customer_id"],
            email=record["email"],
            phone=record["phone"],
            postal_address=record["postal_address"],
            email_sha256=record["email_sha256"],
            phone_sha256=record["phone_sha256"],
            scopes=tuple(record["scopes"]),
            issued_at=as_datetime(record["issued_at"]),
            deadline=as_datetime(record["deadline"]),
            action=Action(record.get("action") or Action.OPT_OUT),
            requested_at=_known_time(record.get("requested_at") or 0),
            device_id=record.get("device_id"),
        )


def _known_time(value: int | datetime) -> datetime | None:
    """A version-2 ``requested_at``; None for a version-1 command's 0 (the epoch)."""
    at = as_datetime(value)
    return None if at.timestamp() <= 0 else at


@dataclass(frozen=True)
class Outcome:
    """What the destination did with one command. ``detail`` must carry no raw PII."""

    command_id: str
    status: AckStatus
    detail: str | None = None

    @classmethod
    def applied(cls, command_id: str, detail: str | None = None) -> Outcome:
        return cls(command_id, AckStatus.APPLIED, detail)

    @classmethod
    def already_suppressed(cls, command_id: str, detail: str | None = None) -> Outcome:
        return cls(command_id, AckStatus.ALREADY_SUPPRESSED, detail)

    @classmethod
    def rejected(cls, command_id: str, reason: str) -> Outcome:
        return cls(command_id, AckStatus.REJECTED, reason)


@dataclass(frozen=True)
class Awaiting:
    """``apply`` handed the command over; the destination confirms it later (``settle``)."""

    command_id: str


class IncompleteBatch(RetriableError):
    """Raised by ``apply`` after finishing part of a batch: ``outcomes`` are kept, the
    commands without one are retried after ``cause``'s backoff."""

    def __init__(self, outcomes: Sequence[Outcome], cause: RetriableError) -> None:
        super().__init__(str(cause), retry_after=cause.retry_after)
        self.outcomes = list(outcomes)
        self.cause = cause
        self.log_each_retry = cause.log_each_retry


class CredentialsRefused(RetriableError):
    """The destination refused *us*: a 401/403, a changed SSH host key. That is our
    misconfiguration, never the person's: nothing is rejected, the batch waits (paused, in
    its group) and is tried again every ``retry_after`` seconds until the credentials work.
    ``CredentialsWatch`` logs when it starts and when it ends, so retries are not logged."""

    log_each_retry = False


class CredentialsWatch:
    """Whether ``destination`` refuses our credentials right now (thread-safe: the health
    endpoint reads it). It sets the gauge and logs once per change, never once per retry;
    ``readiness`` is a ``/readyz`` check (not ready while refused; ``/healthz`` is untouched,
    the loop keeps polling)."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._gauge = CREDENTIALS_REFUSED.labels(destination)
        self._gauge.set(0)

    @property
    def refused(self) -> bool:
        with self._lock:
            return self._reason is not None

    def observe(self, error: RetriableError | None, got_answers: bool) -> None:
        """After one ``apply``: its error (None: it finished) and whether it produced outcomes."""
        cause = error.cause if isinstance(error, IncompleteBatch) else error
        if isinstance(cause, CredentialsRefused):
            self._refuse(str(cause), cause.retry_after)
        elif error is None or got_answers:
            self._clear()

    def _refuse(self, reason: str, retry_after: float | None) -> None:
        with self._lock:
            started = self._reason is None
            self._reason = reason
        self._gauge.set(1)
        if started:
            log.error(
                "destination refuses our credentials; its partitions are paused and nothing is "
                "rejected until they work (fix the credentials; it resumes by itself)",
                destination=self.destination,
                reason=reason,
                check_every_seconds=retry_after,
            )

    def _clear(self) -> None:
        with self._lock:
            was = self._reason is not None
            self._reason = None
        self._gauge.set(0)
        if was:
            log.info("destination accepts our credentials again; resuming", destination=self.destination)

    def readiness(self) -> str | None:
        with self._lock:
            reason = self._reason
        return None if reason is None else f"credentials refused: {reason}"


class Connector(ABC):
    """One destination system. ``apply`` must be idempotent per ``command_id`` (see
    ``services.connectors.dedupe`` for why)."""

    destination: str

    @abstractmethod
    def apply(self, commands: Sequence[Command]) -> Sequence[Outcome | Awaiting]:
        """Apply ``commands`` (distinct ids); return one ``Outcome`` per command applied or
        permanently refused (``Awaiting`` when the destination confirms later). Raise
        ``RetriableError`` (``retry_after`` when the provider said so) for transient failures."""

    def settle(self) -> list[StoredOutcome]:
        """Outcomes of earlier ``Awaiting`` commands that the destination has confirmed
        since; called on every loop poll, so it must be cheap when there is nothing new."""
        return []

    def close(self) -> None:
        """Release clients and files."""
        return None


# --- pure helpers ----------------------------------------------------------------------------
def decode_command(codec: Codec, payload: bytes | None, destination: str) -> Command:
    """A SuppressionCommand for ``destination``; ``PoisonMessage`` for anything else."""
    command = Command.from_record(decode_suppression_command(codec, payload))
    if command.destination != destination:
        raise PoisonMessage(
            "wrong_destination", f"command for {command.destination} on the {destination} topic"
        )
    return command


def stored_outcomes(
    pending: Sequence[Command], returned: Sequence[Outcome | Awaiting], at: datetime
) -> tuple[dict[str, StoredOutcome], list[str]]:
    """Match ``apply``'s outcomes to the pending commands: ``(outcomes by id, ignored ids)``.
    Outcomes for ids not pending, or repeated, are ignored (a connector bug, logged)."""
    wanted = {c.command_id: c for c in pending}
    matched: dict[str, StoredOutcome] = {}
    ignored: list[str] = []
    for outcome in returned:
        if isinstance(outcome, Awaiting):
            continue
        command = wanted.get(outcome.command_id)
        if command is None or outcome.command_id in matched:
            ignored.append(outcome.command_id)
            continue
        matched[outcome.command_id] = StoredOutcome(
            outcome.command_id, command.request_id, outcome.status, outcome.detail, at
        )
    return matched, ignored


def ack_record(outcome: StoredOutcome, destination: str) -> SuppressionAckRecord:
    """The SuppressionAck body for a stored outcome (the same on every re-ack)."""
    return SuppressionAckRecord(
        command_id=outcome.command_id,
        request_id=outcome.request_id,
        destination=destination,
        status=outcome.status.value,
        detail=outcome.detail,
        acked_at=to_millis(outcome.applied_at),
    )


SUPERSEDED = "superseded: a newer request for this person was applied here; the destination was not called"


def superseded(commands: Sequence[Command], latest: Mapping[str, Latest]) -> dict[str, Outcome]:
    """The outcomes of ``commands`` older than the newest request applied for the same person
    (``latest``, by subject) or than another command of the batch for the same person: they
    are acknowledged without calling the destination (see the module docstring)."""
    newest: dict[str, tuple[tuple[datetime, bool, str], Action]] = {
        subject: (item.rank, item.action) for subject, item in latest.items()
    }
    for command in commands:
        rank = command.rank
        if rank is None:
            continue
        for subject in command.subjects():
            if subject not in newest or rank > newest[subject][0]:
                newest[subject] = (rank, command.action)
    found: dict[str, Outcome] = {}
    for command in commands:
        rank = command.rank
        if rank is None:
            continue
        newer = [newest[s] for s in command.subjects() if newest[s][0] > rank]
        if newer:
            action = max(newer)[1]
            status = AckStatus.ALREADY_SUPPRESSED if action is Action.OPT_OUT else AckStatus.APPLIED
            found[command.command_id] = Outcome(command.command_id, status, SUPERSEDED)
    return found


def latest_of(commands: Sequence[Command], done: Collection[str]) -> list[Latest]:
    """What applying ``commands`` whose ids are in ``done`` makes the newest per person."""
    return [
        Latest(subject, c.requested_at, c.action, c.request_id)
        for c in commands
        if c.command_id in done and c.requested_at is not None
        for subject in c.subjects()
    ]


# The people's advisory locks of one transaction (``DedupeStore.serialized``) take room in
# PostgreSQL's shared lock table (max_locks_per_transaction x max_connections, 12,800 on the
# devstack's server, shared by every session): a backlog's batch of 5,000 commands with up to
# five identifiers each would ask for 25,000 locks and fail with "out of shared memory" on
# every retry (30,000 did on the devstack). A larger batch is applied and recorded in groups.
MAX_LOCKED_SUBJECTS = 5_000


def lock_groups(commands: Sequence[Command]) -> list[list[Command]]:
    """Pure: ``commands`` in order, cut into groups of at most ``MAX_LOCKED_SUBJECTS``
    subjects (one group for any batch that fits: the usual case)."""
    groups: list[list[Command]] = []
    current: list[Command] = []
    count = 0
    for command in commands:
        size = len(command.subjects()) if command.rank is not None else 0
        if current and count + size > MAX_LOCKED_SUBJECTS:
            groups.append(current)
            current, count = [], 0
        current.append(command)
        count += size
    if current:
        groups.append(current)
    return groups


def connector_backoff(settings: Settings) -> Backoff:
    """The consume loop's wait between attempts of a connector's failing batch."""
    return Backoff(
        initial_seconds=settings.connector_retry_initial_seconds,
        max_seconds=settings.connector_retry_max_backoff_seconds,
        retry_after_max_seconds=settings.connector_retry_after_max_seconds,
    )


@dataclass
class ApplyRun:
    """What one ``apply`` call got: outcomes by command id, and the transient error to
    retry the rest after (None when every command has an outcome)."""

    outcomes: dict[str, StoredOutcome]
    error: RetriableError | None
    awaiting: frozenset[str] = frozenset()


def apply_once(connector: Connector, commands: Sequence[Command], clock: Clock) -> ApplyRun:
    """Call ``connector.apply`` once. Outcomes of an ``IncompleteBatch`` are kept with its
    error; commands left without an outcome make a ``RetriableError``. Any other
    ``RetriableError`` propagates (nothing to keep), and so does every other error (a
    connector bug: the service stops, nothing is acked). There is no waiting here: the
    consume loop retries the batch, idling in its group, honouring ``retry_after``."""
    started = time.monotonic()
    error: RetriableError | None = None
    returned: Sequence[Outcome | Awaiting]
    try:
        returned = connector.apply(commands)
    except IncompleteBatch as partial:
        returned, error = partial.outcomes, partial
    finally:
        APPLY_SECONDS.labels(connector.destination).observe(time.monotonic() - started)
    matched, ignored = stored_outcomes(commands, returned, clock.now())
    if ignored:
        log.error(
            "connector returned outcomes for commands it was not given",
            destination=connector.destination,
            count=len(ignored),
        )
    awaiting = frozenset(
        r.command_id for r in returned if isinstance(r, Awaiting) and r.command_id not in matched
    ) & {c.command_id for c in commands}
    missing = len(commands) - len(matched) - len(awaiting)
    if error is None and missing:
        error = RetriableError(f"{connector.destination} gave no outcome for {missing} commands")
    return ApplyRun(matched, error, awaiting)


# --- the step ------------------------------------------------------------------------------
class ConnectorStep:
    def __init__(
        self,
        settings: Settings,
        connector: Connector,
        producer: Producing,
        codec: Codec,
        clock: Clock,
        store: DedupeStore,
        credentials: CredentialsWatch | None = None,
    ) -> None:
        self.settings = settings
        self.connector = connector
        self.destination = connector.destination
        self.credentials = credentials or CredentialsWatch(self.destination)
        self.service = service_name(self.destination)
        self.producer = producer
        self.codec = codec
        self.clock = clock
        self.store = store
        self._topic = settings.suppress_topic(self.destination)
        # The batch's counters, bound once (``labels()`` looks a child up on every call).
        self._consumed = {
            outcome: metrics.MESSAGES_CONSUMED.labels(self.service, self._topic, outcome)
            for outcome in ("processed", "duplicate", "dead_lettered")
        }
        self._acks_produced = metrics.MESSAGES_PRODUCED.labels(self.service, settings.acks_topic)
        self._produce_seconds = metrics.PRODUCE_SECONDS.labels(self.service)
        self._outcomes = {
            (status, source): OUTCOMES.labels(self.destination, status.value, source)
            for status in AckStatus
            for source in ("applied", "stored")
        }

    # --- Step interface -------------------------------------------------------------------
    def poll(self) -> None:
        self.producer.poll(0)
        self._settle()

    def close(self) -> None:
        try:
            self.producer.flush(10)
            self.connector.close()
        finally:
            self.store.close()

    def submit(self, messages: Sequence[Message]) -> None:
        deliveries: list[tuple[Message, Command]] = []
        dead: list[tuple[Message, PoisonMessage]] = []
        for message in messages:
            try:
                deliveries.append((message, decode_command(self.codec, message.value(), self.destination)))
            except PoisonMessage as poison:
                dead.append((message, poison))
        outcomes: dict[str, StoredOutcome] = {}
        fresh: list[Command] = []
        # One group unless the batch is very large; a group's outcomes are durable before the
        # next group starts (a failing group raises, and the retry finds the earlier ones).
        for group in lock_groups(first_of_each(c for _, c in deliveries)):
            outcomes.update(self._apply_and_record(group, fresh))

        tracker = DeliveryTracker(self.producer)
        for _, command in deliveries:
            if command.command_id not in outcomes:
                continue  # Awaiting: acknowledged by a later settle(), or re-sent by the sweeper
            tracker.produce(
                self.settings.acks_topic,
                value=self.codec.encode(
                    "SuppressionAck", ack_record(outcomes[command.command_id], self.destination)
                ),
                key=command.request_id,
            )
        for message, why in dead:
            dead_letter(
                tracker,
                self.settings.suppress_dlq_topic(self.destination),
                message,
                why.reason,
                why.detail,
                self.service,
            )
        started = time.monotonic()
        tracker.wait()
        self._produce_seconds.observe(time.monotonic() - started)
        self._count(deliveries, dead, {c.command_id for c in fresh}, outcomes)
        collect_young()  # the batch's provider calls left reference cycles (gc_tuning)

    # --- internals --------------------------------------------------------------------------
    def _settle(self) -> None:
        """Record and acknowledge what the destination confirmed since (``Awaiting``
        commands). A transient failure is logged and tried again on a later poll: the
        confirmations stay with the destination (and the sweeper re-sends meanwhile)."""
        try:
            settled = self.connector.settle()
            if not settled:
                return
            stored = self.store.record(settled)
            tracker = DeliveryTracker(self.producer)
            for outcome in stored.values():
                tracker.produce(
                    self.settings.acks_topic,
                    value=self.codec.encode("SuppressionAck", ack_record(outcome, self.destination)),
                    key=outcome.request_id,
                )
            tracker.wait()
        except RetriableError as exc:
            # Recorded outcomes answer the sweeper's re-send; unrecorded ones stay with the
            # destination and are settled again.
            log.warning("could not settle confirmations yet", destination=self.destination, error=str(exc))
            return
        for outcome in stored.values():
            self._outcomes[(outcome.status, "applied")].inc()
        self._acks_produced.inc(len(stored))
        log.info("confirmations acknowledged", destination=self.destination, acks=len(stored))

    def _apply_and_record(self, group: list[Command], fresh: list[Command]) -> dict[str, StoredOutcome]:
        """The outcomes of ``group`` (distinct commands): the stored ones of commands seen
        before, and those of the others (appended to ``fresh``), applied once now. Every
        outcome obtained is committed, also the partial ones of a failed call (so those are
        never applied again); then its error is raised, and the loop retries the batch after
        its backoff (or the provider's Retry-After). Commands older than what was applied here
        for the same person are not applied (``superseded``); the lookup, that check, the call
        and the record hold the people's locks (``DedupeStore.serialized``), so two instances
        of one destination never interleave them for one person. The lookup and the newest
        applied are read in the same round trip as the locks (issue #15)."""
        subjects = sorted({s for c in group if c.rank is not None for s in c.subjects()})
        # Another instance of this destination waits for these people until we recorded.
        with self.store.serialized(subjects):
            known, latest = self.store.read([c.command_id for c in group], subjects)
            new = [c for c in group if c.command_id not in known]
            if not new:
                return known
            fresh.extend(new)
            stale = superseded(new, latest)
            to_apply = [c for c in new if c.command_id not in stale]
            kept, _ = stored_outcomes(new, list(stale.values()), self.clock.now())
            run = ApplyRun({}, None)
            if to_apply:
                try:
                    run = apply_once(self.connector, to_apply, self.clock)
                except RetriableError as exc:  # raised as it is: nothing to keep
                    self.credentials.observe(exc, got_answers=False)
                    raise
                self.credentials.observe(run.error, bool(run.outcomes))
            done = {cid for cid, o in run.outcomes.items() if o.status is not AckStatus.REJECTED}
            stored = self.store.record(
                [*kept.values(), *run.outcomes.values()], latest_of(to_apply, done | run.awaiting)
            )
        if stale:
            for command in new:
                if command.command_id in stale:
                    SUPERSEDED_COMMANDS.labels(self.destination, command.action.value).inc()
            log.info("superseded commands acknowledged", destination=self.destination, count=len(stale))
        if run.error is not None:
            raise run.error
        return {**known, **stored}

    def _count(
        self,
        deliveries: list[tuple[Message, Command]],
        dead: list[tuple[Message, PoisonMessage]],
        applied_ids: set[str],
        outcomes: Mapping[str, StoredOutcome],
    ) -> None:
        first_seen: set[str] = set()
        processed = duplicates = acked = 0
        by_outcome: dict[tuple[AckStatus, str], int] = {}
        for _, command in deliveries:
            outcome = outcomes.get(command.command_id)
            if outcome is None:  # Awaiting the destination's confirmation
                processed += command.command_id not in first_seen
                first_seen.add(command.command_id)
                continue
            acked += 1
            if command.command_id in applied_ids and command.command_id not in first_seen:
                first_seen.add(command.command_id)
                processed += 1
                key = (outcome.status, "applied")
            else:
                duplicates += 1
                key = (outcome.status, "stored")
            by_outcome[key] = by_outcome.get(key, 0) + 1
        for key, count in by_outcome.items():
            self._outcomes[key].inc(count)
        for _, poison in dead:
            metrics.DEAD_LETTERED.labels(self.service, poison.reason).inc()
        self._consumed["processed"].inc(processed)
        self._consumed["duplicate"].inc(duplicates)
        self._consumed["dead_lettered"].inc(len(dead))
        self._acks_produced.inc(acked)
        log.info(
            "batch acknowledged",
            destination=self.destination,
            messages=len(deliveries) + len(dead),
            applied=processed,
            reacknowledged=duplicates,
            dead_lettered=len(dead),
        )


def service_name(destination: str) -> str:
    return f"connector.{destination}"


def run_connector(
    settings: Settings,
    connector: Connector,
    stop: threading.Event,
    clock: Clock | None = None,
    health: HealthState = HEALTH,
) -> None:
    """Run ``connector`` in the shared consume loop until ``stop`` is set. While the
    destination refuses our credentials, ``/readyz`` reports it (check
    ``credentials:<destination>``)."""
    service = service_name(connector.destination)
    watch = CredentialsWatch(connector.destination)
    step = ConnectorStep(
        settings,
        connector,
        RenewableProducer(
            lambda: make_producer(settings), service, metrics.PRODUCERS_RENEWED.labels(service).inc
        ),
        default_codec(),
        clock or SystemClock(),
        DedupeStore(settings.dsn(), connector.destination, settings.database_prepared_statements),
        watch,
    )
    group = settings.group(service)
    check = f"credentials:{connector.destination}"
    health.add_check(check, watch.readiness)
    tune_gc()
    try:
        ConsumerLoop(
            settings,
            service,
            [settings.suppress_topic(connector.destination)],
            step,
            stop,
            group_id=group,
            observer=observe_loop(settings, service, group, health),
            backoff=connector_backoff(settings),
            linger_ms=CONNECTOR_BATCH_LINGER_MS,
        ).run()
    finally:
        health.remove_check(check)
