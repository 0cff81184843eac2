"""Each consuming service's batch linger: its own when OPTOUT_BATCH_LINGER_MS is unset
(intake longest, since its batches set every downstream service's; the connectors barely),
the setting's for every service when it is set (issue #15)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import Message

from services.common.consumer_loop import ConsumerLoop
from services.common.renewable_producer import RenewableProducer
from services.common.settings import (
    BATCH_LINGER_MS,
    CONFIRMER_BATCH_LINGER_MS,
    CONNECTOR_BATCH_LINGER_MS,
    INTAKE_BATCH_INTERVAL_MS,
    INTAKE_BATCH_LINGER_MS,
    Settings,
)
from services.confirmer import service as confirmer_service
from services.connectors import kit
from services.connectors.kit import Command, Connector, Outcome
from services.intake import service as intake_service
from tests.unit.test_consumer_loop import ScriptedStep


def loop(settings: Settings, **kwargs: Any) -> ConsumerLoop:
    return ConsumerLoop(settings, "svc", ["t"], ScriptedStep(), threading.Event(), **kwargs)


def test_unset_each_service_lingers_its_own() -> None:
    settings = Settings(topic_prefix="u.")
    assert settings.batch_linger_ms is None
    assert loop(settings).linger_ms == BATCH_LINGER_MS
    assert loop(settings, linger_ms=INTAKE_BATCH_LINGER_MS).linger_ms == INTAKE_BATCH_LINGER_MS


def test_set_the_setting_holds_for_every_service() -> None:
    settings = Settings(topic_prefix="u.", batch_linger_ms=7)
    assert loop(settings).linger_ms == 7
    assert loop(settings, linger_ms=INTAKE_BATCH_LINGER_MS).linger_ms == 7
    assert loop(Settings(topic_prefix="u.", batch_linger_ms=0), linger_ms=60).linger_ms == 0


def test_an_empty_value_is_unset_as_the_k8s_config_map_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTOUT_BATCH_LINGER_MS", "")
    assert Settings(topic_prefix="u.").batch_linger_ms is None
    monkeypatch.setenv("OPTOUT_BATCH_LINGER_MS", "35")
    assert Settings(topic_prefix="u.").batch_linger_ms == 35


def test_intake_lingers_longer_than_the_confirmer_and_the_connectors() -> None:
    """The order the measurements call for (README, Performance): intake sets the cadence,
    the confirmer gathers the connectors' acks of one intake batch, the connectors' batch
    arrives nearly whole."""
    assert INTAKE_BATCH_INTERVAL_MS > CONFIRMER_BATCH_LINGER_MS > CONNECTOR_BATCH_LINGER_MS >= 0
    assert INTAKE_BATCH_LINGER_MS < CONNECTOR_BATCH_LINGER_MS  # intake waits by its interval


class Captured(Exception):
    """Raised by the stand-in loop so the service's run() returns at once."""


def capture_loop(monkeypatch: pytest.MonkeyPatch, module: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    class Recording:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.update(kwargs, service=args[1])

        def run(self) -> None:
            raise Captured

    monkeypatch.setattr(module, "ConsumerLoop", Recording)
    return seen


@pytest.mark.parametrize(
    ("module", "step", "producer", "linger", "interval"),
    [
        (intake_service, "IntakeStep", "intake_producer", INTAKE_BATCH_LINGER_MS, INTAKE_BATCH_INTERVAL_MS),
        (confirmer_service, "ConfirmerStep", "make_producer", CONFIRMER_BATCH_LINGER_MS, None),
    ],
    ids=["intake", "confirmer"],
)
def test_the_service_runs_its_loop_with_its_linger(
    monkeypatch: pytest.MonkeyPatch, module: Any, step: str, producer: str, linger: int, interval: int | None
) -> None:
    seen = capture_loop(monkeypatch, module)
    steps: list[tuple[Any, ...]] = []
    monkeypatch.setattr(module, step, lambda *a, **k: steps.append(a))
    monkeypatch.setattr(module, producer, lambda settings: object())
    monkeypatch.setattr(module, "observe_loop", lambda settings, service: None)
    with pytest.raises(Captured):
        module.run(Settings(topic_prefix="u."), threading.Event())
    assert seen["linger_ms"] == linger
    assert seen.get("interval_ms") == interval
    [(_, made, *_)] = steps  # produces through a producer replaced when it only times out
    assert isinstance(made, RenewableProducer) and made.service == seen["service"]


class NoCalls(Connector):
    destination = "email_provider"

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        raise AssertionError("the loop never runs here")


def test_a_connector_runs_its_loop_with_its_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_loop(monkeypatch, kit)
    steps: list[tuple[Any, ...]] = []
    monkeypatch.setattr(kit, "ConnectorStep", lambda *a, **k: steps.append(a))
    monkeypatch.setattr(kit, "DedupeStore", lambda *a, **k: object())
    monkeypatch.setattr(kit, "make_producer", lambda settings: object())
    monkeypatch.setattr(kit, "observe_loop", lambda *a, **k: None)
    monkeypatch.setattr(kit, "tune_gc", lambda: None)
    with pytest.raises(Captured):
        kit.run_connector(Settings(topic_prefix="u."), NoCalls(), threading.Event())
    assert seen["linger_ms"] == CONNECTOR_BATCH_LINGER_MS
    [(_, _, made, *_)] = steps
    assert isinstance(made, RenewableProducer) and made.service == seen["service"]


def test_the_setting_documents_each_services_own_linger() -> None:
    description = Settings.model_fields["batch_linger_ms"].description or ""
    for ms in (INTAKE_BATCH_LINGER_MS, CONNECTOR_BATCH_LINGER_MS, CONFIRMER_BATCH_LINGER_MS):
        assert f"{ms} ms" in description
    interval = Settings.model_fields["batch_interval_ms"].description or ""
    assert f"intake {INTAKE_BATCH_INTERVAL_MS} ms" in interval


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are recorded (seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout if timeout is not None else -1.0)
        return self.is_set()


class Trickle:
    """A consumer with one message ready per ``consume`` call for a first message."""

    def __init__(self) -> None:
        self.offset = 0

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if timeout == 0:
            return []  # nothing more fetched
        self.offset += 1
        return [Message(topic="t", partition=0, offset=self.offset, value=b"x")]


def timed_loop(now: list[float], stop: RecordingStop, linger_ms: int, interval_ms: int) -> ConsumerLoop:
    """A loop whose clock reads ``now[0]`` and whose waits ``stop`` records."""
    return ConsumerLoop(
        Settings(topic_prefix="u."),
        "svc",
        ["t"],
        ScriptedStep(),
        stop,
        monotonic=lambda: now[0],
        linger_ms=linger_ms,
        interval_ms=interval_ms,
    )


def test_intake_starts_a_batch_at_most_every_interval_and_never_waits_when_late() -> None:
    """The wait after a batch's first message runs until the interval has passed since the
    previous batch started: none for the first batch or after an idle spell, the rest of the
    interval after a short batch, none when a batch took longer than the interval."""
    now = [0.0]
    stop = RecordingStop()
    interval = INTAKE_BATCH_INTERVAL_MS / 1000
    loop = timed_loop(now, stop, INTAKE_BATCH_LINGER_MS, INTAKE_BATCH_INTERVAL_MS)
    consumer = Trickle()
    loop._next_batch(consumer)
    assert stop.waits == []  # the first batch: nothing to space it from
    now[0] += 0.03  # the batch took 30 ms
    loop._next_batch(consumer)
    assert stop.waits == [pytest.approx(interval - 0.03)]
    now[0] += 5 * interval  # idle, then a request: it starts at once
    loop._next_batch(consumer)
    assert len(stop.waits) == 1
    now[0] += 1.5 * interval  # a batch longer than the interval: the next starts at once
    loop._next_batch(consumer)
    assert len(stop.waits) == 1


def test_the_interval_never_shortens_the_linger() -> None:
    now = [0.0]
    stop = RecordingStop()
    loop = timed_loop(now, stop, linger_ms=40, interval_ms=100)
    loop._next_batch(Trickle())
    now[0] += 0.09
    loop._next_batch(Trickle())
    assert stop.waits == [pytest.approx(0.04), pytest.approx(0.04)]


def test_the_interval_setting_holds_for_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop(Settings(topic_prefix="u."), interval_ms=INTAKE_BATCH_INTERVAL_MS).interval_ms == (
        INTAKE_BATCH_INTERVAL_MS
    )
    assert loop(Settings(topic_prefix="u.")).interval_ms == 0
    monkeypatch.setenv("OPTOUT_BATCH_INTERVAL_MS", "")
    assert loop(Settings(topic_prefix="u."), interval_ms=100).interval_ms == 100
    monkeypatch.setenv("OPTOUT_BATCH_INTERVAL_MS", "0")
    assert loop(Settings(topic_prefix="u."), interval_ms=100).interval_ms == 0
