"""The guard in tests/conftest.py: errors logged from any thread, through structlog as the
services configure it or through stdlib logging, and the JSON logs of child processes, are
seen; declared ones are let through."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from services.common.logging import configure_logging, get_logger
from tests.support.logcapture import CAPTURE, Capture, json_log_errors


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _in_thread(fn: object) -> None:
    assert callable(fn)
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join(10)


def test_structlog_errors_from_a_service_thread_are_captured_after_configure_logging(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")  # what `optout run` and the web service do
    log = get_logger("svc")
    _in_thread(lambda: log.error("batch exploded", count=3))
    _in_thread(lambda: log.warning("only a warning"))
    _in_thread(lambda: log.info("fine"))
    found = [e for e in CAPTURE.unexpected() if e.source == "structlog"]
    assert [e.event for e in found] == ["batch exploded"] and "count=3" in found[0].detail
    # The rendered line still reaches stdout: capturing changes nothing for the services.
    assert json.loads(capsys.readouterr().out.splitlines()[0])["event"] == "batch exploded"
    CAPTURE.allow("^batch exploded$")
    assert CAPTURE.unexpected() == [] and CAPTURE.seen("exploded")


def test_stdlib_errors_are_captured_and_declared_ones_allowed(expected_errors: Capture) -> None:
    _in_thread(lambda: logging.getLogger("uvicorn.error").error("Exception in ASGI application"))
    logging.getLogger("x").warning("not an error")
    assert [e.event for e in CAPTURE.unexpected()] == ["Exception in ASGI application"]
    expected_errors.allow("ASGI")
    assert CAPTURE.unexpected() == []


@pytest.mark.expected_errors("declared by the marker")
def test_the_marker_declares_errors() -> None:
    get_logger("t").error("declared by the marker")
    assert CAPTURE.unexpected() == [] and CAPTURE.seen("marker")


def test_child_process_json_logs_count_too(tmp_path: Path) -> None:
    out, err = tmp_path / "svc.stdout.log", tmp_path / "svc.stderr.log"
    out.write_text(
        "\n".join(
            [
                json.dumps({"event": "batch recorded", "level": "info"}),
                json.dumps({"event": "database gone", "level": "error", "attempt": 2}),
                "not json",
            ]
        )
    )
    err.write_text("Traceback (most recent call last):\n  File ...\nValueError: boom\n")
    found = json_log_errors("intake", [out, err, tmp_path / "missing.log"])
    assert [(e.source, e.event) for e in found] == [("intake", "database gone"), ("intake", "Traceback")]
    CAPTURE.watch(lambda: found)
    assert len(CAPTURE.unexpected()) == 2
    CAPTURE.allow("database gone", "Traceback")
    assert CAPTURE.unexpected() == []
