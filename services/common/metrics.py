"""Prometheus metrics shared by every service (names carry units; counters end in _total).

Every series a service will ever export is created at start-up with a zero value,
so dashboards and alerts see it before the first event. Labels are low-cardinality
(service, topic, outcome, destination, reason): never a request id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common.logging import get_logger

log = get_logger(__name__)

MESSAGES_CONSUMED = Counter(
    "optout_messages_consumed_total", "Messages consumed, by outcome.",
    ["service", "topic", "outcome"],
)
MESSAGES_PRODUCED = Counter(
    "optout_messages_produced_total", "Messages produced (delivery confirmed).", ["service", "topic"]
)
DEAD_LETTERED = Counter(
    "optout_messages_dead_lettered_total", "Messages sent to a DLQ, by reason.",
    ["service", "reason"],
)
RETRIES = Counter("optout_retries_total", "Retries of transient failures.", ["service", "operation"])
REBALANCES = Counter("optout_rebalances_total", "Partition assignment changes.", ["service", "kind"])
ASSIGNED_PARTITIONS = Gauge("optout_assigned_partitions", "Partitions assigned.", ["service"])
BATCH_SIZE = Histogram(
    "optout_batch_size_messages", "Messages per processed batch.", ["service"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "optout_batch_processing_seconds", "Time to process one batch end to end.", ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DB_SECONDS = Histogram(
    "optout_database_seconds", "Database round trips per batch.", ["service", "operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PRODUCE_SECONDS = Histogram(
    "optout_produce_flush_seconds", "Time to get every delivery report of a batch.", ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAST_PROCESSED = Gauge(
    "optout_last_record_processed_timestamp_seconds",
    "Unix time the service last finished processing a record.", ["service"],
)

CONSUME_OUTCOMES = ("processed", "duplicate", "dead_lettered", "failed")


def init_service_metrics(service: str, topics: list[str]) -> None:
    """Create this service's series with zero values."""
    for topic in topics:
        for outcome in CONSUME_OUTCOMES:
            MESSAGES_CONSUMED.labels(service, topic, outcome)
    ASSIGNED_PARTITIONS.labels(service).set(0)
    LAST_PROCESSED.labels(service)
    for kind in ("assigned", "revoked", "lost"):
        REBALANCES.labels(service, kind)


def serve_metrics(port: int) -> None:
    """Expose /metrics on ``port`` (0: disabled)."""
    if port:
        start_http_server(port, addr="0.0.0.0")
        log.info("metrics endpoint listening", port=port)
