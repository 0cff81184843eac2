"""Prometheus metrics shared by every service (names carry units; counters end in _total).

Every series a service will ever export is created at start-up with a zero value,
so dashboards and alerts see it before the first event. Labels are low-cardinality
(service, topic, outcome, destination, reason): never a request id.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from services.common.clock import to_millis

MESSAGES_CONSUMED = Counter(
    "optout_messages_consumed_total",
    "Messages consumed, by outcome.",
    ["service", "topic", "outcome"],
)
MESSAGES_PRODUCED = Counter(
    "optout_messages_produced_total", "Messages produced (delivery confirmed).", ["service", "topic"]
)
DEAD_LETTERED = Counter(
    "optout_messages_dead_lettered_total",
    "Messages sent to a DLQ, by reason.",
    ["service", "reason"],
)
RETRIES = Counter("optout_retries_total", "Retries of transient failures.", ["service", "operation"])
PRODUCERS_RENEWED = Counter(
    "optout_producers_renewed_total",
    "Producers replaced after batches in a row (the web's: a minute of messages) delivered "
    "nothing and timed out.",
    ["service"],
)
REBALANCES = Counter("optout_rebalances_total", "Partition assignment changes.", ["service", "kind"])
ASSIGNED_PARTITIONS = Gauge("optout_assigned_partitions", "Partitions assigned.", ["service"])
BATCH_SIZE = Histogram(
    "optout_batch_size_messages",
    "Messages per processed batch.",
    ["service"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "optout_batch_processing_seconds",
    "Time to process one batch end to end.",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DB_SECONDS = Histogram(
    "optout_database_seconds",
    "Database round trips per batch.",
    ["service", "operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PRODUCE_SECONDS = Histogram(
    "optout_produce_flush_seconds",
    "Time to get every delivery report of a batch.",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAST_PROCESSED = Gauge(
    "optout_last_record_processed_timestamp_seconds",
    "Unix time the service last finished processing a record.",
    ["service"],
)
REQUESTS_NEEDING_ATTENTION = Gauge(
    "optout_requests_needing_attention",
    "Requests a destination refused (state NEEDS_ATTENTION), as of the confirmer's last sweep.",
)


# --- Consumer lag: the names and labels of kafka-lag-exporter, which SREs' dashboards know.
# Set by each service from librdkafka statistics (its own partitions) and by the exporter
# (`optout run exporter`, every pipeline group, also when its consumer is stopped).
GROUP_LAG = Gauge(
    "kafka_consumergroup_group_lag",
    "Messages between the group's committed offset and the partition's high watermark.",
    ["group", "topic", "partition"],
)
GROUP_LAG_SECONDS = Gauge(
    "kafka_consumergroup_group_lag_seconds",
    "Age of the oldest unconsumed message (now - timestamp of the message at the committed "
    "offset); 0 when caught up.",
    ["group", "topic", "partition"],
)
GROUP_MAX_LAG = Gauge(
    "kafka_consumergroup_group_max_lag", "Largest partition lag of the group, in messages.", ["group"]
)
GROUP_MAX_LAG_SECONDS = Gauge(
    "kafka_consumergroup_group_max_lag_seconds",
    "Largest partition lag of the group, in seconds.",
    ["group"],
)
GROUP_OFFSET = Gauge(
    "kafka_consumergroup_group_offset", "The group's committed offset.", ["group", "topic", "partition"]
)
PARTITION_LATEST_OFFSET = Gauge(
    "kafka_partition_latest_offset", "High watermark of the partition.", ["topic", "partition"]
)
GROUP_STATUS = Gauge(
    "optout_consumergroup_status",
    "Burrow-style status of the group (worst partition): 1 for the current status, 0 for the others.",
    ["group", "status"],
)
PARTITION_STATUS = Gauge(
    "optout_consumergroup_partition_status_code",
    "Burrow-style partition status: 0 OK, 1 WARN, 3 STOP, 4 STALL, 5 REWIND.",
    ["group", "topic", "partition"],
)
LAG_SAMPLED = Gauge(
    "optout_consumergroup_lag_sampled_timestamp_seconds",
    "Unix time the exporter last read the groups' offsets successfully.",
)
# Replication of the pipeline's topics, as the exporter last saw it in the cluster's metadata.
UNDER_REPLICATED_PARTITIONS = Gauge(
    "optout_kafka_under_replicated_partitions",
    "Partitions of a pipeline topic with fewer in-sync replicas than replicas (a broker down or behind).",
    ["topic"],
)
UNWRITABLE_PARTITIONS = Gauge(
    "optout_kafka_unwritable_partitions",
    "Partitions of a pipeline topic that refuse acks=all writes: no leader, or fewer in-sync "
    "replicas than min.insync.replicas.",
    ["topic"],
)

# --- End to end: from the customer's request to the confirmation (the confirmer observes it).
END_TO_END_SECONDS = Histogram(
    "optout_end_to_end_latency_seconds",
    "Time from a request's requested_at to its confirmation.",
    buckets=(
        1,
        5,
        15,
        60,
        300,
        900,
        3600,
        4 * 3600,
        12 * 3600,
        86400,
        2 * 86400,
        3 * 86400,
        7 * 86400,
        14 * 86400,
        30 * 86400,
        45 * 86400,
        90 * 86400,
    ),
)


def observe_confirmation(requested_at: int | datetime, confirmed_at: int | datetime) -> None:
    """Record one request's end-to-end latency when its confirmation is emitted, from the
    confirmation record's timestamp-millis fields (epoch milliseconds as the confirmer writes
    them: no datetime per confirmation, issue #15; or datetimes)."""
    END_TO_END_SECONDS.observe(max(0.0, (_millis(confirmed_at) - _millis(requested_at)) / 1000))


def _millis(moment: int | datetime) -> int:
    return moment if isinstance(moment, int) else to_millis(moment)


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
    RETRIES.labels(service, "batch")
    PRODUCERS_RENEWED.labels(service)
    BATCH_SIZE.labels(service)
    BATCH_SECONDS.labels(service)
    PRODUCE_SECONDS.labels(service)
