"""SIGTERM and SIGINT both ask a service to stop: it drains its current batch and exits."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from services.common.logging import get_logger

log = get_logger(__name__)


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            return
        log.info("stop requested; draining the current batch", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
