"""Every error a service logs during a test fails that test unless the test expects it.

``install()`` (called once per pytest process by tests/conftest.py) puts a structlog
processor first in every structlog configuration, including the ones made later by
``services.common.logging.configure_logging`` (``structlog.configure`` is wrapped so the
processor survives re-configuration), and a stdlib handler on the root logger. Both record
events at level error or above into ``CAPTURE``, from any thread, whatever the renderer.

Child processes (tests/e2e harnesses) register a source of their own log lines with
``watch``; their JSON lines at level error or above count the same way.

A test declares what it provokes with ``@pytest.mark.expected_errors("regex", ...)`` or,
when it knows only at run time, ``expected_errors.allow("regex")`` (the fixture); a pattern
is searched in the event text (structlog's event, the stdlib message) of each error.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import structlog.testing

ERROR_METHODS = frozenset({"error", "err", "critical", "fatal", "exception", "failure"})
ERROR_LEVELS = frozenset({"error", "critical", "fatal", "exception"})


@dataclass(frozen=True)
class ErrorEvent:
    source: str  # "structlog", "logging" or the name of a child process
    logger: str
    event: str
    detail: str

    def line(self) -> str:
        return f"[{self.source}] {self.logger}: {self.event}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Capture:
    """The errors logged since the last ``reset``, and the sources of child-process logs."""

    events: list[ErrorEvent] = field(default_factory=list)
    sources: list[Callable[[], list[ErrorEvent]]] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self.events.clear()
            self.sources.clear()
            self.allowed.clear()

    def add(self, event: ErrorEvent) -> None:
        with self._lock:
            self.events.append(event)

    def allow(self, *patterns: str) -> None:
        with self._lock:
            self.allowed.extend(re.compile(p) for p in patterns)

    def watch(self, source: Callable[[], list[ErrorEvent]]) -> None:
        with self._lock:
            self.sources.append(source)

    def all_events(self) -> list[ErrorEvent]:
        with self._lock:
            events, sources = list(self.events), list(self.sources)
        for source in sources:
            events.extend(source())
        return events

    def unexpected(self) -> list[ErrorEvent]:
        with self._lock:
            allowed = list(self.allowed)
        return [e for e in self.all_events() if not any(p.search(e.event) for p in allowed)]

    def seen(self, pattern: str) -> bool:
        """True when an error matching ``pattern`` was logged (for tests that provoke one)."""
        regex = re.compile(pattern)
        return any(regex.search(e.event) for e in self.all_events())


CAPTURE = Capture()


def _short(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def capture_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: record errors, change nothing."""
    level = str(event_dict.get("level", method_name)).lower()
    if method_name in ERROR_METHODS or level in ERROR_LEVELS:
        name = event_dict.get("logger") or getattr(logger, "name", "") or ""
        detail = ", ".join(
            f"{k}={_short(v)}" for k, v in event_dict.items() if k not in ("event", "level", "timestamp")
        )
        CAPTURE.add(ErrorEvent("structlog", str(name), str(event_dict.get("event", "")), _short(detail, 400)))
    return event_dict


class _ErrorHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is still an error worth reporting
            message = str(record.msg)
        detail = record.exc_text or (repr(record.exc_info[1]) if record.exc_info else "")
        CAPTURE.add(ErrorEvent("logging", record.name, message, _short(detail, 400)))


_HANDLER = _ErrorHandler(level=logging.ERROR)
_original_configure = structlog.configure


def _with_capture(processors: Iterable[Any] | None) -> list[Any] | None:
    if processors is None:
        return None
    listed = [p for p in processors if p is not capture_processor]
    return [capture_processor, *listed]


def _configure(processors: Iterable[Any] | None = None, **kwargs: Any) -> None:
    # Loggers cached on first use keep the processors of that moment, so a later
    # re-configuration (structlog.testing.capture_logs, another test's configure_logging)
    # would miss them depending on test order: in tests nothing is cached.
    kwargs["cache_logger_on_first_use"] = False
    _original_configure(processors=_with_capture(processors), **kwargs)


def ensure_installed() -> None:
    """Idempotent: after ``structlog.reset_defaults()`` or any ``configure`` the processor is
    back in front; the stdlib handler is on the root logger."""
    structlog.configure = _configure
    current = structlog.get_config()["processors"]
    if not current or current[0] is not capture_processor:
        _original_configure(processors=_with_capture(current), cache_logger_on_first_use=False)
    root = logging.getLogger()
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)


def json_log_errors(name: str, paths: Iterable[Path]) -> list[ErrorEvent]:
    """Error lines of a child process's JSON log files (structlog's JSON renderer), plus
    Python tracebacks on its stderr."""
    out: list[ErrorEvent] = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("{"):
                try:
                    record = json.loads(stripped)
                except ValueError:
                    continue
                if isinstance(record, dict) and str(record.get("level", "")).lower() in ERROR_LEVELS:
                    detail = ", ".join(f"{k}={_short(v)}" for k, v in record.items() if k != "event")
                    logger = str(record.get("logger", ""))
                    out.append(ErrorEvent(name, logger, str(record.get("event")), detail))
            elif stripped.startswith("Traceback (most recent call last)"):
                out.append(ErrorEvent(name, "stderr", "Traceback", _short(text[-400:], 400)))
    return out


@contextmanager
def capture_all_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """``structlog.testing.capture_logs`` at every level: whatever level an earlier test
    configured logging at (``configure_logging(level="warning")`` filters info and debug
    before any processor sees them), every event in the block is captured."""
    previous = structlog.get_config()["wrapper_class"]
    with structlog.testing.capture_logs() as logs:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
        try:
            yield logs
        finally:
            structlog.configure(wrapper_class=previous)
