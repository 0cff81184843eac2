"""``optout run confirmer``: wires the confirmer step (and its sweeper) into the consume loop."""

from __future__ import annotations

import threading

from services.common import metrics
from services.common.avro import default_codec
from services.common.clock import Clock, SystemClock
from services.common.consumer_loop import ConsumerLoop
from services.common.gc_tuning import tune_gc
from services.common.kafka import make_producer
from services.common.renewable_producer import RenewableProducer
from services.common.settings import CONFIRMER_BATCH_LINGER_MS, Settings
from services.confirmer.step import ConfirmerStep
from services.confirmer.sweeper import SERVICE
from services.observability.loop import observe_loop


def run(settings: Settings, stop: threading.Event, clock: Clock | None = None) -> None:
    producer = RenewableProducer(
        lambda: make_producer(settings), SERVICE, metrics.PRODUCERS_RENEWED.labels(SERVICE).inc
    )
    step = ConfirmerStep(settings, producer, default_codec(), clock or SystemClock())
    observer = observe_loop(settings, SERVICE)
    tune_gc()
    ConsumerLoop(
        settings,
        SERVICE,
        [settings.acks_topic],
        step,
        stop,
        observer=observer,
        linger_ms=CONFIRMER_BATCH_LINGER_MS,
    ).run()
