"""OPTOUT_KAFKA_REQUEST_LOG_SECONDS: every Kafka client logs the requests it sent (librdkafka
statistics), chained after a stats_cb already configured (the consumers' lag tracker)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.common.kafka import consumer_config, producer_config, request_counts
from services.common.settings import Settings
from tests.support.logcapture import capture_all_logs

STATS = {
    "name": "rdkafka#producer-1",
    "brokers": {
        "127.0.0.1:19092/1": {
            "nodeid": 1,
            "tx": 40,
            "txbytes": 9000,
            "rx": 40,
            "rxbytes": 800,
            "req": {"Produce": 30, "Fetch": 0, "Metadata": 2},
        },
        "GroupCoordinator": {"nodeid": -1, "tx": 3, "rx": 3, "req": {"Heartbeat": 3, "Produce": 0}},
    },
}


def test_request_counts_are_summed_over_the_broker_connections() -> None:
    client, counts = request_counts(json.dumps(STATS))
    assert client == "rdkafka#producer-1"
    assert counts == {
        "Produce": 30,
        "Metadata": 2,
        "Heartbeat": 3,
        "tx": 43,
        "txbytes": 9000,
        "rx": 43,
        "rxbytes": 800,
    }
    with pytest.raises(ValueError):
        request_counts("[1, 2]")


def test_off_by_default() -> None:
    config = producer_config(Settings())
    assert "stats_cb" not in config and "statistics.interval.ms" not in config


def test_clients_log_their_requests_after_the_stats_cb_they_had() -> None:
    settings = Settings(kafka_request_log_seconds=1)
    seen: list[str] = []
    consumer = consumer_config(settings, "g", stats_cb=seen.append, **{"statistics.interval.ms": 5000})
    assert consumer["statistics.interval.ms"] == 1000  # often enough for both
    raw = json.dumps(STATS)
    with capture_all_logs() as logs:  # at every level, whatever an earlier test configured
        consumer["stats_cb"](raw)
        consumer["stats_cb"](raw)  # within the second: passed on, not logged again
    assert seen == [raw, raw]
    logged: list[dict[str, Any]] = [e for e in logs if e["event"] == "kafka requests"]
    assert len(logged) == 1 and logged[0]["Produce"] == 30 and logged[0]["client"] == "rdkafka#producer-1"
    producer = producer_config(settings)
    assert producer["statistics.interval.ms"] == 1000 and callable(producer["stats_cb"])
