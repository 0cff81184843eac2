"""``optout run intake``: wires the intake step into the shared consume loop."""

from __future__ import annotations

import threading

from services.common.avro import default_codec
from services.common.clock import SystemClock
from services.common.consumer_loop import ConsumerLoop
from services.common.kafka import make_producer
from services.common.settings import Settings
from services.intake.step import SERVICE, IntakeStep
from services.observability.loop import observe_loop


def run(settings: Settings, stop: threading.Event) -> None:
    producer = make_producer(settings)
    step = IntakeStep(settings, producer, default_codec(), SystemClock())
    observer = observe_loop(settings, SERVICE)
    ConsumerLoop(settings, SERVICE, [settings.requests_topic], step, stop, observer=observer).run()
