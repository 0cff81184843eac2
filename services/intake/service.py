"""``optout run intake``: wires the intake step into the shared consume loop."""

from __future__ import annotations

import threading

from services.common import metrics
from services.common.avro import default_codec
from services.common.clock import SystemClock
from services.common.consumer_loop import ConsumerLoop
from services.common.gc_tuning import tune_gc
from services.common.renewable_producer import RenewableProducer
from services.common.settings import INTAKE_BATCH_INTERVAL_MS, INTAKE_BATCH_LINGER_MS, Settings
from services.intake.step import SERVICE, IntakeStep, intake_producer
from services.observability.loop import observe_loop


def run(settings: Settings, stop: threading.Event) -> None:
    producer = RenewableProducer(
        lambda: intake_producer(settings), SERVICE, metrics.PRODUCERS_RENEWED.labels(SERVICE).inc
    )
    step = IntakeStep(settings, producer, default_codec(), SystemClock())
    observer = observe_loop(settings, SERVICE)
    tune_gc()
    ConsumerLoop(
        settings,
        SERVICE,
        [settings.requests_topic],
        step,
        stop,
        observer=observer,
        linger_ms=INTAKE_BATCH_LINGER_MS,
        interval_ms=INTAKE_BATCH_INTERVAL_MS,
    ).run()
