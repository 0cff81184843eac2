"""A producer that delivered nothing but timeouts for batches in a row is replaced
(services/common/renewable_producer.py); checked against the in-process fake producer."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from services.common import metrics
from services.common.errors import RetriableError
from services.common.kafka import DeliveryTracker
from services.common.renewable_producer import (
    RENEW_AFTER_SILENT_SECONDS,
    RENEW_AFTER_TIMED_OUT_BATCHES,
    RenewableProducer,
)
from tests.support.fake_kafka import FakeBroker, FakeProducer

TOPIC = "u.out"
TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")


class Handles:
    """Makes the handles a RenewableProducer asks for: the first ``stuck`` ones time out
    every delivery, later ones deliver."""

    def __init__(self, stuck: int = 1) -> None:
        self.broker = FakeBroker()
        self.stuck = stuck
        self.made: list[FakeProducer] = []

    def __call__(self) -> FakeProducer:
        failing = TIMED_OUT if len(self.made) < self.stuck else None
        self.made.append(FakeProducer(self.broker, fail_every=failing))
        return self.made[-1]


def _renewable(handles: Handles, service: str) -> RenewableProducer:
    return RenewableProducer(handles, service, metrics.PRODUCERS_RENEWED.labels(service).inc)


def _batch(producer: RenewableProducer, values: list[bytes]) -> None:
    tracker = DeliveryTracker(producer)
    for value in values:
        tracker.produce(TOPIC, value, key=b"k")
    tracker.wait()


def _renewed(service: str) -> float:
    return REGISTRY.get_sample_value("optout_producers_renewed_total", {"service": service}) or 0.0


def test_batches_that_only_time_out_replace_the_handle_and_the_retry_delivers() -> None:
    handles = Handles(stuck=1)
    producer = _renewable(handles, "renew-a")
    for attempt in range(RENEW_AFTER_TIMED_OUT_BATCHES):
        assert len(handles.made) == 1, attempt
        with pytest.raises(RetriableError, match="_MSG_TIMED_OUT"):
            _batch(producer, [b"a", b"b"])
    assert len(handles.made) == 2 and producer.handle is handles.made[1]
    assert _renewed("renew-a") == 1
    _batch(producer, [b"a", b"b"])  # the consume loop's retry of the same batch
    assert [m.value() for m in handles.broker.messages(TOPIC)] == [b"a", b"b"]


def test_one_delivered_message_in_between_keeps_the_handle() -> None:
    handles = Handles(stuck=1)
    producer = _renewable(handles, "renew-b")
    stuck = handles.made[0]
    for _ in range(3):
        with pytest.raises(RetriableError):
            _batch(producer, [b"a"])
        stuck.fail_deliveries = [TIMED_OUT, TIMED_OUT]  # then one of three goes through
        stuck.fail_every = None
        with pytest.raises(RetriableError):
            _batch(producer, [b"a", b"b", b"c"])
        stuck.fail_every = TIMED_OUT
    assert len(handles.made) == 1 and _renewed("renew-b") == 0


def test_other_delivery_failures_keep_the_handle() -> None:
    handles = Handles(stuck=0)
    producer = _renewable(handles, "renew-c")
    for _ in range(RENEW_AFTER_TIMED_OUT_BATCHES + 1):
        handles.made[0].fail_deliveries = [KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "no")]
        with pytest.raises(RetriableError, match="TOPIC_AUTHORIZATION_FAILED"):
            _batch(producer, [b"a"])
    assert len(handles.made) == 1 and _renewed("renew-c") == 0


def test_messages_still_queued_when_the_wait_gives_up_count_as_timed_out() -> None:
    class NeverDelivers(FakeProducer):
        def flush(self, timeout: float = -1) -> int:
            return len(self.pending)  # nothing comes back within the wait

    made: list[FakeProducer] = []

    def make() -> FakeProducer:
        made.append(NeverDelivers(FakeBroker()) if not made else FakeProducer(FakeBroker()))
        return made[-1]

    producer = RenewableProducer(make, "renew-d", metrics.PRODUCERS_RENEWED.labels("renew-d").inc)
    for _ in range(RENEW_AFTER_TIMED_OUT_BATCHES):
        with pytest.raises(RetriableError, match="not delivered"):
            _batch(producer, [b"a", b"b"])
    assert len(made) == 2 and _renewed("renew-d") == 1
    assert made[0].purged == 4  # the old handle's queue is purged, its reports served
    assert made[0].pending == []


class Ticks:
    """An injected monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OTHER = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "no")


def _per_message(handles: Handles, service: str, clock: Ticks) -> RenewableProducer:
    return RenewableProducer(
        handles,
        service,
        metrics.PRODUCERS_RENEWED.labels(service).inc,
        renew_after_seconds=RENEW_AFTER_SILENT_SECONDS,
        monotonic=clock,
    )


def test_a_minute_of_timeouts_with_no_delivery_renews_the_handle_once() -> None:
    clock, handles = Ticks(), Handles(stuck=1)
    producer = _per_message(handles, "renew-e", clock)
    producer.delivery_outcome(TIMED_OUT)  # the first timeout starts the minute
    clock.now += RENEW_AFTER_SILENT_SECONDS - 1
    producer.delivery_outcome(TIMED_OUT)
    assert not producer.renew_if_due() and len(handles.made) == 1
    clock.now += 1
    producer.delivery_outcome(TIMED_OUT)
    assert producer.renew_if_due() and len(handles.made) == 2
    assert producer.handle is handles.made[1] and _renewed("renew-e") == 1
    assert not producer.renew_if_due()  # once; the next minute starts at the next timeout
    producer.delivery_outcome(TIMED_OUT)
    clock.now += RENEW_AFTER_SILENT_SECONDS - 1
    producer.delivery_outcome(TIMED_OUT)
    assert not producer.renew_if_due() and _renewed("renew-e") == 1


def test_a_delivery_in_the_minute_or_other_failures_keep_the_handle() -> None:
    clock, handles = Ticks(), Handles(stuck=1)
    producer = _per_message(handles, "renew-f", clock)
    producer.delivery_outcome(TIMED_OUT)
    clock.now += RENEW_AFTER_SILENT_SECONDS / 2
    producer.delivery_outcome(None)  # the broker answered: a short outage
    clock.now += RENEW_AFTER_SILENT_SECONDS / 2
    producer.delivery_outcome(TIMED_OUT)
    clock.now += RENEW_AFTER_SILENT_SECONDS / 2
    producer.delivery_outcome(OTHER)  # not a timeout: the handle is not the problem
    producer.delivery_outcome(TIMED_OUT)
    assert not producer.renew_if_due()
    assert len(handles.made) == 1 and _renewed("renew-f") == 0


def test_a_quiet_hour_then_one_timeout_renews_nothing() -> None:
    clock, handles = Ticks(), Handles(stuck=1)
    producer = _per_message(handles, "renew-g", clock)
    producer.delivery_outcome(None)
    clock.now += 3600  # no traffic: nothing delivered, nothing timed out
    producer.delivery_outcome(TIMED_OUT)
    assert not producer.renew_if_due() and len(handles.made) == 1
