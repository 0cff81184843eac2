"""The three ``submit`` methods (intake, connector, confirmer) with the fake producer and
in-process fakes of their database side, injected through their constructors: what each
produces, that every delivery report is in before ``submit`` returns (so the loop commits
offsets after the output, never before), dead letters with their reason, and failures
raised as ``RetriableError`` after keeping what was finished. Plus a connector in the
real consume loop (fake consumer) waiting out a provider's Retry-After while polling."""

from __future__ import annotations

import gc
import itertools
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from confluent_kafka import KafkaError, Message

from services.common.avro import default_codec
from services.common.clock import ManualClock, to_millis
from services.common.consumer_loop import IDLE_POLL_SECONDS, ConsumerLoop
from services.common.contract import AckStatus
from services.common.errors import RetriableError
from services.common.gc_tuning import GC_THRESHOLD
from services.common.settings import Settings
from services.confirmer.outcomes import Ack
from services.confirmer.step import ConfirmerStep
from services.confirmer.store import AckOutcome
from services.connectors.dedupe import Latest, StoredOutcome
from services.connectors.kit import (
    Command,
    Connector,
    ConnectorStep,
    CredentialsRefused,
    IncompleteBatch,
    Outcome,
    connector_backoff,
)
from services.domain.planning import PlannedCommand
from services.domain.validation import OptOutRequest
from services.intake.step import IntakeStep
from services.intake.store import RecordOutcome
from services.publisher.publish import RequestPublisher
from tests.support.fake_kafka import FakeBroker, FakeClock, FakeConsumer, FakeProducer

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
CODEC = default_codec()


def _settings(**overrides: Any) -> Settings:
    return Settings(topic_prefix="u.", batch_size=100, batch_timeout_ms=100, **overrides)


def _messages(topic: str, values: Sequence[bytes | None]) -> list[Message]:
    return [
        Message(topic=topic, partition=0, offset=i, key=b"k", value=v, headers=[("origin", b"test")])
        for i, v in enumerate(values)
    ]


def _reasons(producer: FakeProducer, topic: str) -> list[str]:
    return sorted((dict(p.headers)["optout.dlq.reason"] or b"").decode() for p in producer.to(topic))


# --- intake -----------------------------------------------------------------------------------
class FakeRequestStore:
    """``record_batch`` in memory: event ids with their content hash, unacked commands."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.unacked: set[str] = set()
        self.reject: set[str] = set()  # event ids the "database" refuses (DataError)
        self.down = False

    def __call__(
        self, requests: list[OptOutRequest], commands: dict[str, list[PlannedCommand]], now: datetime
    ) -> RecordOutcome:
        if self.down:
            raise RetriableError("database down")
        if self.reject & {r.event_id for r in requests}:
            raise psycopg.DataError("value too long")
        outcome = RecordOutcome()
        for request in requests:
            known = self.rows.get(request.event_id)
            ids = {c.command_id for c in commands.get(request.event_id, [])}
            if known is None:
                self.rows[request.event_id] = request.content_sha256
                self.unacked |= ids
                outcome.new.add(request.event_id)
            elif known == request.content_sha256:
                outcome.duplicates.add(request.event_id)
                outcome.resend |= ids & self.unacked
            else:
                outcome.conflicts.add(request.event_id)
        return outcome


def _request(publisher: RequestPublisher, event_id: str, scopes: list[str], **fields: Any) -> bytes:
    prepared = publisher.prepare({"event_id": event_id, "scopes": scopes, "requested_at": NOW, **fields})
    return CODEC.encode("OptOutRequested", prepared.record)


@pytest.fixture
def intake() -> Iterator[tuple[IntakeStep, FakeProducer, FakeRequestStore, RequestPublisher]]:
    cfg = _settings(intake_pipeline_chunk=2)
    producer = FakeProducer(FakeBroker())
    store = FakeRequestStore()
    step = IntakeStep(cfg, producer, CODEC, ManualClock(NOW), recorder=store)
    publisher = RequestPublisher(cfg, producer=FakeProducer(FakeBroker()), clock=ManualClock(NOW))
    yield step, producer, store, publisher
    step.close()


def test_intake_fans_out_new_requests_and_dead_letters_bad_ones(intake: Any) -> None:
    step, producer, store, publisher = intake
    cfg = step.settings
    values = [
        _request(publisher, "evt-1", ["EMAIL_MARKETING"], email="a@example.com"),
        _request(publisher, "evt-2", ["ALL"], email="b@example.com", customer_id="C-2"),
        b"not avro",
        _request(publisher, "evt-1", ["ALL"], email="a@example.com"),  # same id, other content
        _request(publisher, "evt-1", ["EMAIL_MARKETING"], email="a@example.com"),  # exact repeat
    ]
    step.submit(_messages(cfg.requests_topic, values))
    # Returned: so every command and dead letter is delivered (not merely queued).
    assert producer.pending == []
    email = producer.to(cfg.suppress_topic("email_provider"))
    assert sorted(p.key for p in email) == [b"evt-1", b"evt-2"]
    assert [p.key for p in producer.to(cfg.suppress_topic("third_party_sharing"))] == [b"evt-2"]
    assert _reasons(producer, cfg.requests_dlq_topic) == ["duplicate_event_id_conflict", "undecodable"]
    assert set(store.rows) == {"evt-1", "evt-2"}


def test_intake_redelivery_records_nothing_twice_and_resends_only_unacknowledged(intake: Any) -> None:
    step, producer, store, publisher = intake
    cfg = step.settings
    batch = _messages(cfg.requests_topic, [_request(publisher, "evt-9", ["ALL"], email="c@example.com")])
    step.submit(batch)
    first = len(producer.delivered)
    store.unacked.clear()  # every destination acknowledged
    step.submit(batch)
    assert len(producer.delivered) == first  # a duplicate sends nothing
    assert first > 0


def test_intake_isolates_the_request_the_database_refuses(intake: Any) -> None:
    step, producer, store, publisher = intake
    cfg = step.settings
    store.reject = {"evt-bad"}
    values = [
        _request(publisher, "evt-ok", ["EMAIL_MARKETING"], email="d@example.com"),
        _request(publisher, "evt-bad", ["EMAIL_MARKETING"], email="e@example.com"),
    ]
    # Both in one chunk: the chunk fails, then each is recorded alone.
    step.submit(_messages(cfg.requests_topic, values))
    assert _reasons(producer, cfg.requests_dlq_topic) == ["database_rejected"]
    assert [p.key for p in producer.to(cfg.suppress_topic("email_provider"))] == [b"evt-ok"]


def test_intake_raises_retriable_when_the_database_is_down_or_delivery_fails(intake: Any) -> None:
    step, producer, store, publisher = intake
    cfg = step.settings
    batch = _messages(cfg.requests_topic, [_request(publisher, "evt-x", ["ALL"], email="f@example.com")])
    store.down = True
    with pytest.raises(RetriableError):
        step.submit(batch)
    assert producer.delivered == []
    store.down = False
    producer.fail_deliveries = [KafkaError(KafkaError._MSG_TIMED_OUT, "broker away")]
    with pytest.raises(RetriableError):
        step.submit(batch)
    step.submit(batch)  # the retry re-sends the commands still unacknowledged
    assert {p.key for p in producer.delivered} == {b"evt-x"}


# --- connector --------------------------------------------------------------------------------
class FakeDedupeStore:
    def __init__(self) -> None:
        self.rows: dict[str, StoredOutcome] = {}
        self.newest: dict[str, Latest] = {}
        self.locked: list[list[str]] = []
        self.closed = False

    def lookup(self, command_ids: Sequence[str]) -> dict[str, StoredOutcome]:
        return {c: self.rows[c] for c in command_ids if c in self.rows}

    def latest(self, subjects: Sequence[str]) -> dict[str, Latest]:
        return {s: self.newest[s] for s in subjects if s in self.newest}

    def read(
        self, command_ids: Sequence[str], subjects: Sequence[str]
    ) -> tuple[dict[str, StoredOutcome], dict[str, Latest]]:
        return self.lookup(command_ids), self.latest(subjects)

    @contextmanager
    def serialized(self, subjects: Sequence[str]) -> Iterator[None]:
        self.locked.append(sorted(subjects))
        yield

    def record(
        self, outcomes: Sequence[StoredOutcome], latest: Sequence[Latest] = ()
    ) -> dict[str, StoredOutcome]:
        for o in outcomes:
            self.rows.setdefault(o.command_id, o)
        for item in latest:
            if item.subject not in self.newest or item.rank > self.newest[item.subject].rank:
                self.newest[item.subject] = item
        return {o.command_id: self.rows[o.command_id] for o in outcomes}

    def close(self) -> None:
        self.closed = True


class ScriptedConnector(Connector):
    destination = "email_provider"

    def __init__(self, script: Sequence[BaseException | None] = ()) -> None:
        self.script = list(script)
        self.calls: list[list[str]] = []

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        self.calls.append([c.command_id for c in commands])
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return [Outcome.applied(c.command_id) for c in commands]


def _command(destination: str = "email_provider") -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid4()),
        "request_id": f"evt-{uuid.uuid4()}",
        "destination": destination,
        "customer_id": None,
        "email": "x@example.com",
        "phone": None,
        "postal_address": None,
        "email_sha256": None,
        "phone_sha256": None,
        "scopes": ["EMAIL_MARKETING"],
        "issued_at": to_millis(NOW),
        "deadline": to_millis(NOW + timedelta(days=10)),
    }


def _connector_step(
    connector: Connector, producer: FakeProducer, store: FakeDedupeStore, **settings: Any
) -> ConnectorStep:
    return ConnectorStep(_settings(**settings), connector, producer, CODEC, ManualClock(NOW), store)


def _acks(producer: FakeProducer, cfg: Settings) -> list[dict[str, Any]]:
    return [CODEC.decode(p.value)[1] for p in producer.to(cfg.acks_topic)]


def test_connector_acknowledges_every_delivery_once_applied_and_dead_letters_the_rest() -> None:
    producer, store = FakeProducer(FakeBroker()), FakeDedupeStore()
    connector = ScriptedConnector()
    step = _connector_step(connector, producer, store)
    a, b, known = _command(), _command(), _command()
    store.rows[known["command_id"]] = StoredOutcome(
        known["command_id"], known["request_id"], AckStatus.REJECTED, "bounced", NOW
    )
    values = [CODEC.encode("SuppressionCommand", c) for c in (a, b, a, known)]
    values += [b"junk", CODEC.encode("SuppressionCommand", _command("mail_house"))]
    step.submit(_messages(step.settings.suppress_topic("email_provider"), values))
    assert producer.pending == []
    assert connector.calls == [[a["command_id"], b["command_id"]]]  # distinct, known one skipped
    acks = _acks(producer, step.settings)
    assert [x["command_id"] for x in acks] == [c["command_id"] for c in (a, b, a, known)]
    assert acks[3]["status"] == "REJECTED" and acks[3]["detail"] == "bounced"
    assert [p.key for p in producer.to(step.settings.acks_topic)] == [
        c["request_id"].encode() for c in (a, b, a, known)
    ]
    assert _reasons(producer, step.settings.suppress_dlq_topic("email_provider")) == [
        "undecodable",
        "wrong_destination",
    ]
    [dead] = producer.to(step.settings.suppress_dlq_topic("email_provider"))[:1]
    assert dict(dead.headers)["origin"] == b"test"  # via the shared dead-letter path


def test_connector_keeps_partial_progress_and_raises_to_the_loop() -> None:
    producer, store = FakeProducer(FakeBroker()), FakeDedupeStore()
    a, b = _command(), _command()

    class Partial(ScriptedConnector):
        def apply(self, commands: Sequence[Command]) -> list[Outcome]:
            self.calls.append([c.command_id for c in commands])
            if len(self.calls) == 1:
                raise IncompleteBatch(
                    [Outcome.applied(a["command_id"])], RetriableError("HTTP 429", retry_after=30.0)
                )
            return [Outcome.applied(c.command_id) for c in commands]

    connector = Partial()
    step = _connector_step(connector, producer, store)
    batch = _messages(
        step.settings.suppress_topic("email_provider"),
        [CODEC.encode("SuppressionCommand", c) for c in (a, b)],
    )
    with pytest.raises(RetriableError) as failed:
        step.submit(batch)
    assert failed.value.retry_after == 30.0
    assert set(store.rows) == {a["command_id"]} and producer.delivered == []  # no ack yet
    step.submit(batch)  # the loop's retry
    assert connector.calls[1] == [b["command_id"]]  # only the rest is applied
    assert sorted(x["command_id"] for x in _acks(producer, step.settings)) == sorted(
        [a["command_id"], b["command_id"]]
    )


def test_connector_ack_delivery_failure_is_retriable_and_not_reapplied() -> None:
    producer, store = FakeProducer(FakeBroker()), FakeDedupeStore()
    connector = ScriptedConnector()
    step = _connector_step(connector, producer, store)
    a = _command()
    batch = _messages(step.settings.suppress_topic("email_provider"), [CODEC.encode("SuppressionCommand", a)])
    producer.fail_deliveries = [KafkaError(KafkaError._MSG_TIMED_OUT, "broker away")]
    with pytest.raises(RetriableError):
        step.submit(batch)
    step.submit(batch)
    assert len(connector.calls) == 1 and len(_acks(producer, step.settings)) == 1


def test_connector_waits_out_a_long_retry_after_in_the_loop_polling_and_paused() -> None:
    """A provider's Retry-After of 120 s (longer than max.poll.interval.ms would allow
    without polling) is waited out by the loop: the consumer is polled every
    IDLE_POLL_SECONDS with its partitions paused, and acks follow the retried apply."""
    broker, clock, stop = FakeBroker(), FakeClock(), threading.Event()
    producer, store = FakeProducer(broker), FakeDedupeStore()
    applied_at: list[float] = []

    class Timed(ScriptedConnector):
        def apply(self, commands: Sequence[Command]) -> list[Outcome]:
            applied_at.append(clock.monotonic())
            return super().apply(commands)

    connector = Timed([RetriableError("HTTP 429", retry_after=120.0)])
    cfg = _settings(connector_retry_after_max_seconds=300.0)
    step = ConnectorStep(cfg, connector, producer, CODEC, ManualClock(NOW), store)
    commands = [_command(), _command()]
    for c in commands:
        broker.append(
            cfg.suppress_topic("email_provider"), CODEC.encode("SuppressionCommand", c), partition=0
        )
    consumers: list[FakeConsumer] = []
    polled_at: list[float] = []

    def factory(settings: Settings, group_id: str, **_: Any) -> FakeConsumer:
        consumer = FakeConsumer(broker, group_id, clock, on_drained=stop.set)
        consumer.on_poll = lambda c: polled_at.append(clock.monotonic()) if c.paused else None
        consumers.append(consumer)
        return consumer

    ConsumerLoop(
        cfg,
        "connector.email_provider",
        [cfg.suppress_topic("email_provider")],
        step,
        stop,
        backoff=connector_backoff(cfg),
        consumer_factory=factory,
        monotonic=clock.monotonic,
    ).run()
    assert len(applied_at) == 2 and applied_at[1] - applied_at[0] >= 120.0
    between = [t for t in polled_at if applied_at[0] <= t <= applied_at[1]]
    assert len(between) >= 120.0 / IDLE_POLL_SECONDS - 1
    assert max(b - a for a, b in itertools.pairwise(between)) <= IDLE_POLL_SECONDS + 1e-9
    assert len(_acks(producer, cfg)) == 2
    assert consumers[0].commits == [[(cfg.suppress_topic("email_provider"), 0, 2)]]


# --- confirmer --------------------------------------------------------------------------------
class FakeConnection:
    def __init__(self, producer: FakeProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.committed: list[int] = []  # confirmations delivered when each transaction committed
        self.rolled_back = 0
        self.synced: list[int] = []  # confirmations delivered when the pipeline was synced

    @contextmanager
    def pipeline(self) -> Iterator[FakeConnection]:
        yield self

    def sync(self) -> None:
        self.synced.append(len(self.producer.to(self.topic)))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.rolled_back += 1
            raise
        self.committed.append(len(self.producer.to(self.topic)))


R = TypeVar("R")


class FakeDb:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def get(self) -> FakeConnection:
        return self.conn

    def run(self, work: Callable[[FakeConnection], R]) -> R:
        return work(self.conn)

    def close(self) -> None:
        return None


class FakeAckStore:
    """``apply_acks``: completes a request on its APPLIED ack; unknown ids are unknown."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known  # command id -> request id
        self.calls = 0

    def __call__(self, conn: Any, acks: Sequence[Ack], now: datetime) -> AckOutcome:
        self.calls += 1
        outcome = AckOutcome()
        for ack in acks:
            if ack.command_id not in self.known:
                outcome.unknown.add(ack.command_id)
                continue
            outcome.changed.add(ack.command_id)
            outcome.confirmations.append(
                {
                    "request_id": ack.request_id,
                    "customer_id": None,
                    "notify_email": None,
                    "notify_postal_address": None,
                    "destinations": [
                        {"destination": ack.destination, "status": "APPLIED", "applied_at": to_millis(NOW)}
                    ],
                    "scopes": ["EMAIL_MARKETING"],
                    "requested_at": to_millis(NOW - timedelta(minutes=1)),
                    "confirmed_at": to_millis(NOW),
                }
            )
        return outcome


def _ack(command_id: str, request_id: str) -> bytes:
    return CODEC.encode(
        "SuppressionAck",
        {
            "command_id": command_id,
            "request_id": request_id,
            "destination": "email_provider",
            "status": "APPLIED",
            "detail": None,
            "acked_at": to_millis(NOW),
        },
    )


def _confirmer(known: dict[str, str]) -> tuple[ConfirmerStep, FakeProducer, FakeConnection]:
    cfg = _settings()
    producer = FakeProducer(FakeBroker())
    conn = FakeConnection(producer, cfg.confirmations_topic)
    step = ConfirmerStep(
        cfg, producer, CODEC, ManualClock(NOW), db=FakeDb(conn), record_acks=FakeAckStore(known)
    )
    return step, producer, conn


def test_confirmer_delivers_confirmations_before_its_transaction_commits() -> None:
    step, producer, conn = _confirmer({"c1": "evt-1"})
    step.submit(_messages(step.settings.acks_topic, [_ack("c1", "evt-1"), _ack("c-none", "evt-2"), b"junk"]))
    assert conn.committed == [1]  # the confirmation was delivered when the transaction committed
    assert conn.synced == [0]  # and the writes were synced (their errors seen) before it was produced
    [confirmation] = producer.to(step.settings.confirmations_topic)
    assert confirmation.key == b"evt-1" and CODEC.decode(confirmation.value)[1]["request_id"] == "evt-1"
    assert _reasons(producer, step.settings.acks_dlq_topic) == ["undecodable", "unknown_command"]


def test_confirmer_rolls_back_when_a_confirmation_is_not_delivered() -> None:
    step, producer, conn = _confirmer({"c1": "evt-1"})
    producer.fail_deliveries = [KafkaError(KafkaError._MSG_TIMED_OUT, "broker away")]
    with pytest.raises(RetriableError):
        step.submit(_messages(step.settings.acks_topic, [_ack("c1", "evt-1")]))
    assert conn.rolled_back == 1 and conn.committed == []


@pytest.mark.expected_errors("destination refuses our credentials")
def test_connector_step_reports_a_plainly_raised_credentials_refusal_and_its_end() -> None:
    """A kind may raise ``CredentialsRefused`` itself (not inside an ``IncompleteBatch``)."""
    producer, store = FakeProducer(FakeBroker()), FakeDedupeStore()
    refused = CredentialsRefused("SFTP host key changed", retry_after=30.0)
    connector = ScriptedConnector([refused, refused])
    step = _connector_step(connector, producer, store)
    a = _command()
    batch = _messages(step.settings.suppress_topic("email_provider"), [CODEC.encode("SuppressionCommand", a)])
    for _ in range(2):
        with pytest.raises(CredentialsRefused):
            step.submit(batch)
        assert step.credentials.refused and step.credentials.readiness() is not None
        assert store.rows == {} and producer.delivered == []  # nothing rejected, nothing acked
    step.submit(batch)
    assert not step.credentials.refused and step.credentials.readiness() is None
    assert [x["status"] for x in _acks(producer, step.settings)] == ["APPLIED"]


def test_intake_pauses_the_garbage_collector_for_a_batch_only(intake: Any) -> None:
    import gc

    step, _, store, publisher = intake
    seen: list[bool] = []
    record = store.__call__

    def recording(*args: Any) -> Any:
        seen.append(gc.isenabled())
        return record(*args)

    step._recorder = recording
    messages = _messages(
        step.settings.requests_topic, [_request(publisher, "evt-gc", ["ALL"], email="g@example.com")]
    )
    assert gc.isenabled()
    step.submit(messages)
    assert seen == [False] and gc.isenabled()
    gc.disable()  # switched off by someone else: stays off
    try:
        step.submit(messages)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_connector_batch_collects_the_reference_cycles_it_left() -> None:
    """A provider call leaves a reference cycle holding its request body (httpx's Response and
    the stream it was read from refer to each other). At the services' collector thresholds,
    counted in net allocations, which such garbage barely moves, it piled up behind a backlog
    (third_party_sharing 1.85x through 1,000,000 opt-outs): a batch collects its cycles when it
    ends (``gc_tuning.collect_young``)."""
    left: list[weakref.ref[Any]] = []

    class Call:  # a stand-in for httpx's Response: refers to itself, holds a request body
        def __init__(self) -> None:
            self.me, self.body = self, bytes(150_000)

    class LeavesCycles(ScriptedConnector):
        def apply(self, commands: Sequence[Command]) -> list[Outcome]:
            left.append(weakref.ref(Call()))
            return super().apply(commands)

    step = _connector_step(LeavesCycles(), FakeProducer(FakeBroker()), FakeDedupeStore())
    values = [CODEC.encode("SuppressionCommand", _command()) for _ in range(20)]
    threshold = gc.get_threshold()
    gc.collect()  # nothing pending: whatever the batch leaves, it leaves below the threshold
    gc.set_threshold(*GC_THRESHOLD)  # as the services run (tune_gc)
    try:
        step.submit(_messages(step.settings.suppress_topic("email_provider"), values))
    finally:
        gc.set_threshold(*threshold)
    assert left, "the connector was not called"
    assert all(ref() is None for ref in left), "the batch's reference cycles outlived it"
