"""structlog set-up: JSON lines in production, readable console on a terminal.

A redaction processor runs last before rendering and masks anything that looks
like an email address, a phone number or a postal address, in every value of
every log line, so raw PII never reaches a log even if a caller slips.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# Keys whose values are personal data whatever they look like.
_PII_KEYS = frozenset(
    {
        "email",
        "phone",
        "postal_address",
        "name",
        "address",
        "lines",
        "city",
        "postal_code",
        "notify_email",
        "key",
    }
)
_EMAIL_RE = re.compile(r"[^\s@<>\"',;:()\[\]]+@[^\s@<>\"',;:()\[\]]+")
# Phone-like: E.164 / international (+ and 7+ digits) or NANP-formatted numbers.
# Narrow on purpose, so dates, offsets and UUIDs in log lines stay readable.
_PHONE_RE = re.compile(
    r"\+\d(?:[\s().-]{0,2}\d){6,14}|\(\d{3}\)\s?\d{3}[-.\s]\d{4}|(?<![\w-])\d{3}[-.\s]\d{3}[-.\s]\d{4}(?![\w-])"
)
REDACTED = "[redacted]"


def redact_text(text: str) -> str:
    text = _EMAIL_RE.sub("[email]", text)
    return _PHONE_RE.sub("[phone]", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if k in _PII_KEYS else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_redact_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


def redact_pii(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask PII in every field of the event."""
    for key in list(event_dict):
        if key in _PII_KEYS:
            event_dict[key] = REDACTED
        elif key not in ("timestamp", "level", "logger"):
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


class _StdoutLogger:
    """Writes each rendered line to whatever ``sys.stdout`` is *now* (not the stream that
    was current when the logger was created and cached)."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        stream = sys.stdout
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger (for libraries) once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_pii,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_StdoutLogger,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
