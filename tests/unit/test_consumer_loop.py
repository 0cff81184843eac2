"""The consume loop's rules, checked in milliseconds against an in-process fake of the
consumer (tests/support/fake_kafka.py): commit only after ``submit`` returned, pause and
keep polling while a failing batch waits (also a provider's long Retry-After), resume
re-assigned partitions, seek back to messages fetched while idling, commit only
partitions still assigned after a revocation, fatal errors stop, PARTITION_EOF does not."""

from __future__ import annotations

import gc
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from tenacity import RetryCallState, Retrying, wait_fixed

from services.common.consumer_loop import (
    IDLE_POLL_SECONDS,
    REJOIN_SECONDS,
    Backoff,
    ConsumerLoop,
    retry_wait_seconds,
    wait_retry_after,
)
from services.common.errors import RetriableError
from services.common.settings import Settings
from tests.support.fake_kafka import FakeBroker, FakeClock, FakeConsumer, Key
from tests.support.logcapture import capture_all_logs

TOPIC = "u.in"
FAST = Backoff(initial_seconds=0.5, max_seconds=2.0, retry_after_max_seconds=300.0)


class ScriptedStep:
    """Raises the scripted errors in turn (None: succeed); records every call."""

    def __init__(self, script: Sequence[BaseException | None] = ()) -> None:
        self.script = list(script)
        self.batches: list[list[tuple[int, int]]] = []
        self.commits_seen: list[int] = []
        self.consumers: list[FakeConsumer] = []
        self.on_submit: Callable[[int], None] | None = None
        self.polls = 0
        self.closed = False

    def submit(self, messages: Sequence[Message]) -> None:
        self.batches.append([(m.partition() or 0, m.offset() or 0) for m in messages])
        if self.consumers:
            self.commits_seen.append(len(self.consumers[0].commits))
        if self.on_submit is not None:
            self.on_submit(len(self.batches))
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome

    def poll(self) -> None:
        self.polls += 1

    def close(self) -> None:
        self.closed = True


class RecordingObserver:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.events: list[str] = []
        self.beats: list[float] = []

    def consumer_config(self) -> dict[str, Any]:
        return {"stats_cb": "marker"}

    def started(self) -> None:
        self.events.append("started")

    def beat(self) -> None:
        self.beats.append(self.clock.monotonic())

    def stopped(self) -> None:
        self.events.append("stopped")


class Harness:
    def __init__(
        self,
        step: Any,
        broker: FakeBroker | None = None,
        initial: list[Key] | None = None,
        backoff: Backoff = FAST,
        on_poll: Callable[[FakeConsumer], None] | None = None,
        errors: Sequence[KafkaError] = (),
    ) -> None:
        self.broker = broker or FakeBroker(partitions=3)
        self.clock = FakeClock()
        self.stop = threading.Event()
        self.consumers: list[FakeConsumer] = []
        self.observer = RecordingObserver(self.clock)
        self.settings = Settings(topic_prefix="u.", batch_size=100, batch_timeout_ms=100)
        self.initial = initial
        self.on_poll = on_poll

        def factory(settings: Settings, group_id: str, **overrides: Any) -> FakeConsumer:
            consumer = FakeConsumer(
                self.broker, group_id, self.clock, initial=self.initial, on_drained=self.stop.set
            )
            consumer.config = overrides
            consumer.on_poll = self.on_poll
            for error in errors:
                consumer.inject_error(error)
            self.consumers.append(consumer)
            return consumer

        if isinstance(step, ScriptedStep):
            step.consumers = self.consumers
        self.loop = ConsumerLoop(
            self.settings,
            "svc",
            [TOPIC],
            step,
            self.stop,
            group_id="g",
            observer=self.observer,
            backoff=backoff,
            consumer_factory=factory,
            monotonic=self.clock.monotonic,
        )

    def consumer_on_poll(self, hook: Callable[[FakeConsumer], None]) -> None:
        self.on_poll = hook

    @property
    def consumer(self) -> FakeConsumer:
        return self.consumers[0]

    def publish(self, partition: int, count: int) -> None:
        for i in range(count):
            self.broker.append(TOPIC, f"v{partition}-{i}".encode(), partition=partition)

    def run(self) -> None:
        self.loop.run()

    def committed(self) -> dict[int, int]:
        return {p: o for (g, (t, p)), o in self.broker.committed.items() if g == "g" and t == TOPIC}


# --- waits ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hint", "backoff", "cap", "expected"),
    [
        (None, 0.7, 10.0, 0.7),  # no hint: our backoff
        (3.0, 0.7, 10.0, 3.0),  # the provider's Retry-After is a floor
        (1.0, 4.0, 10.0, 4.0),  # a longer own backoff is kept
        (120.0, 0.7, 60.0, 60.0),  # capped
        (None, 99.0, 10.0, 10.0),
        (0.0, 0.2, 10.0, 0.2),
    ],
)
def test_retry_wait_seconds(hint: float | None, backoff: float, cap: float, expected: float) -> None:
    assert retry_wait_seconds(hint, backoff, cap) == expected


def _failed_state(error: BaseException, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_wait_retry_after_honours_the_error_hint() -> None:
    wait = wait_retry_after(wait_fixed(0.5), cap=30.0)
    assert wait(_failed_state(RetriableError("429", retry_after=7.0))) == 7.0
    assert wait(_failed_state(RetriableError("503"))) == 0.5
    assert wait(_failed_state(RetriableError("429", retry_after=300.0))) == 30.0
    assert wait(_failed_state(ValueError("not ours"))) == 0.5


# --- the loop ---------------------------------------------------------------------------------
def test_processes_and_commits_after_submit_with_the_observer_wired_in() -> None:
    step = ScriptedStep()
    h = Harness(step)
    h.publish(0, 3)
    h.publish(2, 2)
    h.run()
    assert sorted(o for batch in step.batches for o in batch) == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1)]
    assert step.commits_seen == [0]  # nothing committed before submit ran
    assert h.committed() == {0: 3, 2: 2}
    assert h.consumer.config["stats_cb"] == "marker"  # observer's consumer settings applied
    assert h.observer.events == ["started", "stopped"] and h.observer.beats
    assert step.closed and h.consumer.closed


def test_a_failing_batch_is_not_committed_until_submit_returns() -> None:
    step = ScriptedStep([RetriableError("database down"), RetriableError("still down"), None])
    h = Harness(step)
    h.publish(1, 4)
    h.run()
    assert len(step.batches) == 3 and step.batches[0] == step.batches[2]
    assert step.commits_seen == [0, 0, 0]
    assert h.consumer.commits == [[(TOPIC, 1, 4)]]


def test_a_long_retry_after_is_waited_out_paused_polling_and_beating() -> None:
    step = ScriptedStep([RetriableError("HTTP 429", retry_after=120.0), None])
    h = Harness(step)
    h.publish(0, 2)
    paused_polls: list[bool] = []
    submitted_at: list[float] = []
    step.on_submit = lambda _n: submitted_at.append(h.clock.monotonic())

    def check(consumer: FakeConsumer) -> None:
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        paused_polls.append(bool(owned) and owned <= consumer.paused)

    h.consumer_on_poll(check)
    h.run()
    assert submitted_at[1] - submitted_at[0] >= 120.0  # the Retry-After was honoured
    assert h.consumer.polls >= 120.0 / IDLE_POLL_SECONDS - 1  # and the consumer kept polling
    assert all(paused_polls) and paused_polls  # with every partition paused
    during = [b for b in h.observer.beats if submitted_at[0] <= b <= submitted_at[1]]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert during and max(gaps) <= IDLE_POLL_SECONDS + 1e-9  # /healthz heard from it throughout
    assert h.consumer.paused == set()  # resumed afterwards
    assert h.committed() == {0: 2}


def test_messages_fetched_while_idling_are_sought_back_not_skipped() -> None:
    step = ScriptedStep([RetriableError("down"), None])
    h = Harness(step, initial=[(TOPIC, 0)])
    h.publish(0, 2)
    h.publish(1, 3)

    def assign_p1_once(consumer: FakeConsumer) -> None:
        if consumer.polls == 1:
            consumer.assign([(TOPIC, 1)])  # arrives inside this poll: not paused yet

    h.consumer_on_poll(assign_p1_once)
    h.run()
    processed = {o for batch in step.batches[1:] for o in batch}
    assert {(1, 0), (1, 1), (1, 2)} <= processed  # offset 0 of p1 was fetched while idling
    assert h.committed() == {0: 2, 1: 3}


def test_partitions_revoked_during_a_batch_are_not_committed() -> None:
    step = ScriptedStep([RetriableError("down"), None])
    h = Harness(step)
    h.publish(0, 2)
    h.publish(1, 2)

    def revoke_p1(consumer: FakeConsumer) -> None:
        if consumer.polls == 1:
            consumer.revoke([(TOPIC, 1)])

    h.consumer_on_poll(revoke_p1)
    h.run()
    assert len(step.batches) == 2 and sorted(step.batches[1]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert h.consumer.commits == [[(TOPIC, 0, 2)]]  # p1 belongs to another member now


def test_re_assigned_partitions_are_resumed() -> None:
    """librdkafka keeps a partition's pause flag across revocation and re-assignment."""
    step = ScriptedStep([RetriableError("down"), None])
    h = Harness(step)
    h.publish(0, 1)
    h.publish(1, 1)

    def revoke_p1(consumer: FakeConsumer) -> None:
        if consumer.polls == 2:  # paused by now
            consumer.revoke([(TOPIC, 1)])

    def reassign(n: int) -> None:
        if n == 2:
            h.consumer.assign([(TOPIC, 1)])
            h.publish(1, 2)

    step.on_submit = reassign
    h.consumer_on_poll(revoke_p1)
    h.run()
    assert (TOPIC, 1) not in h.consumer.paused
    assert h.committed()[1] == 3  # every message of p1 processed after it came back


def test_a_stop_request_while_a_batch_fails_commits_nothing() -> None:
    step = ScriptedStep([RetriableError("down")] * 1000)
    h = Harness(step)
    h.publish(0, 1)
    step.on_submit = lambda n: h.stop.set() if n == 3 else None
    h.run()
    assert h.consumer.commits == [] and step.closed and h.consumer.closed


def test_partition_eof_and_transient_errors_are_skipped() -> None:
    step = ScriptedStep()
    errors = [KafkaError(KafkaError._PARTITION_EOF), KafkaError(KafkaError._TRANSPORT, "broker down")]
    h = Harness(step, errors=errors)
    h.publish(0, 1)
    h.run()
    assert step.batches == [[(0, 0)]] and h.committed() == {0: 1}


def test_a_fatal_error_stops_the_loop_and_closes_everything() -> None:
    step = ScriptedStep()
    h = Harness(step, errors=[KafkaError(KafkaError._FENCED, "fenced", fatal=True)])
    with pytest.raises(KafkaException):
        h.run()
    assert step.closed and h.consumer.closed and h.observer.events == ["started", "stopped"]


def test_a_step_bug_propagates_without_commit() -> None:
    step = ScriptedStep([KeyError("bug")])
    h = Harness(step)
    h.publish(0, 1)
    with pytest.raises(KeyError):
        h.run()
    assert h.consumer.commits == [] and len(step.batches) == 1


def test_a_processed_batch_is_freed_by_reference_counting() -> None:
    """Nothing of the loop keeps a batch once it is processed, without the cyclic garbage
    collector: a Retrying made per batch, with callbacks closing over the batch, is a
    reference cycle that kept each batch's messages (in intake, up to 20 batches of 5,000)
    until the collector ran (README, "Memory through a backlog")."""
    step = ScriptedStep()
    h = Harness(step)
    h.publish(0, 3)
    h.publish(1, 2)
    enabled = gc.isenabled()
    gc.disable()
    try:
        h.run()
        logs = list(h.broker.log.values())
        holders = [
            type(r).__name__
            for ms in logs
            for m in ms
            for r in gc.get_referrers(m)
            if not any(r is kept for kept in logs)
        ]
    finally:
        if enabled:
            gc.enable()
    assert len(step.batches) == 1 and h.committed() == {0: 3, 1: 2}
    assert holders == []


def test_retries_of_a_quiet_error_are_not_logged_as_warnings() -> None:
    class Quiet(RetriableError):
        log_each_retry = False

    step = ScriptedStep([Quiet("refused", retry_after=1.0), Quiet("refused", retry_after=1.0), None])
    h = Harness(step)
    h.publish(0, 1)
    with capture_all_logs() as logs:
        h.run()
    retries = [e for e in logs if e["event"] == "batch failed; retrying"]
    assert [e["log_level"] for e in retries] == ["debug", "debug"]
    assert h.committed() == {0: 1}


def test_a_batch_starts_with_the_first_message_and_takes_what_is_fetched_already() -> None:
    """consume(1, timeout) for the first message, then what is fetched already, and what came
    within the linger (one wait, not a wake-up per fetched partition): a steady trickle is never
    held back for the whole batch timeout."""
    step = ScriptedStep()
    h = Harness(step)
    h.publish(0, 3)
    h.run()
    assert step.batches[0] == [(0, 0), (0, 1), (0, 2)]
    assert h.consumer.consume_calls[:3] == [(1, 0.1), (99, 0), (97, 0)]  # then OPTOUT_BATCH_LINGER_MS


def test_a_batch_full_at_once_does_not_linger() -> None:
    step = ScriptedStep()
    h = Harness(step)
    h.loop.settings = Settings(topic_prefix="u.", batch_size=3, batch_timeout_ms=100)
    h.publish(0, 5)
    h.run()
    assert step.batches[0] == [(0, 0), (0, 1), (0, 2)]
    assert h.consumer.consume_calls[:3] == [(1, 0.1), (2, 0), (1, 0.1)]


def test_offsets_are_stored_for_librdkafka_to_commit_on_its_interval() -> None:
    from services.common.consumer_loop import commit_config

    cadence = commit_config(Settings(commit_interval_ms=1000))
    assert cadence == {
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 1000,
    }
    assert commit_config(Settings(commit_interval_ms=0)) == {}  # a synchronous commit per batch
    h = Harness(ScriptedStep())
    h.publish(1, 2)
    h.run()
    assert h.consumer.config["enable.auto.offset.store"] is False
    assert h.committed() == {1: 2}


def test_a_consumer_fetches_ahead_at_most_the_configured_queue() -> None:
    """Behind a backlog librdkafka's default prefetch (64 MiB) grows resident memory."""
    from services.common.kafka import consumer_config

    assert consumer_config(Settings(), "g")["queued.max.messages.kbytes"] == 8192
    smaller = Settings(kafka_consumer_queue_kbytes=1024)
    assert consumer_config(smaller, "g")["queued.max.messages.kbytes"] == 1024


def test_a_consumer_fetches_ahead_at_most_the_configured_messages_in_small_fetches() -> None:
    """Small messages (acks) filled librdkafka's default 100,000-message queue behind a
    backlog: the confirmer's resident memory grew with its lag (about 700 bytes each)."""
    from services.common.kafka import CONSUMER_PARTITION_FETCH_BYTES, consumer_config

    default = consumer_config(Settings(), "g")
    assert default["queued.min.messages"] == 10_000
    assert default["max.partition.fetch.bytes"] == CONSUMER_PARTITION_FETCH_BYTES == 262_144
    assert consumer_config(Settings(kafka_consumer_queue_messages=2000), "g")["queued.min.messages"] == 2000
    extra = Settings(kafka_extra={"max.partition.fetch.bytes": "1048576"})
    assert consumer_config(extra, "g")["max.partition.fetch.bytes"] == "1048576"  # OPTOUT_KAFKA_EXTRA wins


def test_a_consumer_fetches_with_the_configured_wait_and_minimum() -> None:
    from services.common.kafka import consumer_config

    default = consumer_config(Settings(), "g")
    assert (default["fetch.wait.max.ms"], default["fetch.min.bytes"]) == (50, 1)
    windowed = consumer_config(Settings(kafka_fetch_wait_ms=20, kafka_fetch_min_bytes=1_000_000), "g")
    assert (windowed["fetch.wait.max.ms"], windowed["fetch.min.bytes"]) == (20, 1_000_000)


# --- a consumer left out of its group ---------------------------------------------------------
def _run_losing_first(broker: FakeBroker, reassign_empty: bool) -> tuple[list[FakeConsumer], ScriptedStep]:
    """The first consumer loses its partitions at once (its session expired) and then either is
    never taken back into the group or (``reassign_empty``) comes back with no partitions; the
    loop runs until a consumer has seen three empty consumes in a row after a batch."""
    clock, stop, step = FakeClock(), threading.Event(), ScriptedStep()
    consumers: list[FakeConsumer] = []
    keys = [(TOPIC, p) for p in range(broker.partitions)]

    def factory(settings: Settings, group_id: str, **overrides: Any) -> FakeConsumer:
        consumer = FakeConsumer(broker, group_id, clock)
        if consumers:  # a replacement: stop once it has consumed what there is
            consumer.on_drained = stop.set
        consumers.append(consumer)
        return consumer

    loop = ConsumerLoop(
        Settings(topic_prefix="u.", batch_size=100, batch_timeout_ms=100),
        "svc",
        [TOPIC],
        step,
        stop,
        group_id="g",
        consumer_factory=factory,
        monotonic=clock.monotonic,
    )
    first_consume = FakeConsumer.consume

    def consume(self: FakeConsumer, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if self is consumers[0] and self.consumes == 0:
            self.revoke(keys, lost=True)
            if reassign_empty:
                self.assign([])
        if self is consumers[0] and clock.monotonic() > 1000.0 + 3 * REJOIN_SECONDS:
            stop.set()  # not replaced: enough waiting
        return first_consume(self, num_messages, timeout)

    broker.append(TOPIC, b"after the broker came back", partition=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeConsumer, "consume", consume)
        loop.run()
    return consumers, step


def test_a_consumer_still_out_of_its_group_after_losing_its_partitions_is_replaced() -> None:
    consumers, step = _run_losing_first(FakeBroker(partitions=2), reassign_empty=False)
    assert len(consumers) == 2, "the consumer left out of its group was not replaced"
    first, second = consumers
    assert first.closed and first.memberid() is None
    assert first.clock.monotonic() >= 1000.0 + REJOIN_SECONDS  # not before REJOIN_SECONDS
    assert second.memberid() is not None
    assert step.batches == [[(0, 0)]]  # the replacement consumed what waited


def test_a_member_with_no_partitions_is_left_alone() -> None:
    """More instances than partitions: a member the group gave nothing is not replaced."""
    consumers, step = _run_losing_first(FakeBroker(partitions=2), reassign_empty=True)
    assert len(consumers) == 1
    assert step.batches == []
