"""``optout run intake``: wires the intake step into the shared consume loop."""

from __future__ import annotations

import gc
import threading

from services.common.avro import default_codec
from services.common.clock import SystemClock
from services.common.consumer_loop import ConsumerLoop
from services.common.settings import Settings
from services.intake.step import SERVICE, IntakeStep, intake_producer
from services.observability.loop import observe_loop

# Intake allocates a few dozen small containers per event (records, rows, messages), nearly
# all short-lived and free of cycles: with CPython's default first threshold (700
# allocations) the cyclic garbage collector ran hundreds of times per batch and took 20-30%
# of intake's Python time (issue #15). Reference counting frees these objects anyway; the
# collector still runs, every 50,000 allocations, and not at all while a batch is in hand
# (``services.intake.step.paused_gc``).
GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect cycles less often, and never rescan what start-up loaded (``gc.freeze``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run(settings: Settings, stop: threading.Event) -> None:
    producer = intake_producer(settings)
    step = IntakeStep(settings, producer, default_codec(), SystemClock())
    observer = observe_loop(settings, SERVICE)
    tune_gc()
    ConsumerLoop(settings, SERVICE, [settings.requests_topic], step, stop, observer=observer).run()
