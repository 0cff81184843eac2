"""OPTOUT_KAFKA_EXTRA='{"debug": "..."}' makes librdkafka's debug lines reach the service's log
(stderr, with their UTC time); without it the native logger stays silent."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from services.common.kafka import NATIVE_LOG, consumer_config, make_admin, producer_config
from services.common.settings import Settings


@pytest.fixture
def native_log() -> Iterator[logging.Logger]:
    handlers, level, propagate = list(NATIVE_LOG.handlers), NATIVE_LOG.level, NATIVE_LOG.propagate
    for handler in handlers:
        NATIVE_LOG.removeHandler(handler)
    try:
        yield NATIVE_LOG
    finally:
        for handler in list(NATIVE_LOG.handlers):
            NATIVE_LOG.removeHandler(handler)
        for handler in handlers:
            NATIVE_LOG.addHandler(handler)
        NATIVE_LOG.setLevel(level)
        NATIVE_LOG.propagate = propagate


def test_native_lines_stay_silent_without_debug(native_log: logging.Logger) -> None:
    settings = Settings()
    consumer_config(settings, "g")
    producer_config(settings)
    assert native_log.level == logging.CRITICAL
    assert not native_log.handlers


def test_debug_contexts_reach_stderr_with_their_time(
    native_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(kafka_extra={"debug": "cgrp,topic,fetch"})
    config = consumer_config(settings, "g")
    assert config["debug"] == "cgrp,topic,fetch"
    consumer_config(settings, "g")  # a second client: still one handler
    producer_config(settings)
    make_admin(settings)
    assert native_log.level == logging.DEBUG
    assert len(native_log.handlers) == 1
    assert not native_log.propagate  # not once more through the root logger
    # what confluent-kafka hands the logger: (level, "%s [%s] %s", facility, client, text)
    native_log.log(logging.DEBUG, "%s [%s] %s", "FETCH", "rdkafka#consumer-1", "Fetch 6/6/6 toppar(s)")
    line = capsys.readouterr().err.strip()
    assert line.endswith("Z librdkafka FETCH [rdkafka#consumer-1] Fetch 6/6/6 toppar(s)"), line
    assert line[:4].isdigit() and line[10] == "T"
