"""A service's own lag gauges count what arrived on partitions it paused
(services/observability/consumer_lag.py): librdkafka's statistics carry the high watermark of
each partition's last fetch, and a partition paused while a batch waits for its retry is not
fetched, so the lag read from them stopped growing while the database was away (seen in
tests/integration/test_lag.py: 8 of 12 waiting messages counted). The tracker asks the broker
for the high watermarks every interval; checked here with a reader that answers from a dict."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from prometheus_client import REGISTRY

from services.common.settings import Settings
from services.observability.consumer_lag import ConsumerLagTracker
from services.observability.lag_seconds import TopicPartitionKey

TOPIC = "u.optout.requests"


class Broker:
    """Stands in for ``OffsetTimestampReader``: high watermarks and timestamps from dicts."""

    def __init__(self, highs: dict[TopicPartitionKey, int]) -> None:
        self.highs = highs
        self.asked: list[list[TopicPartitionKey]] = []

    def high_watermarks(self, partitions: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        wanted = list(partitions)
        self.asked.append(wanted)
        return {tp: self.highs[tp] for tp in wanted if tp in self.highs}

    def timestamps(self, wanted: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int | None]:
        return {tp: 1_000 for tp in wanted}

    def close(self) -> None:
        pass


def _stats(partitions: dict[int, tuple[int, int]]) -> str:
    """librdkafka statistics of a consumer: partition -> (committed offset, high watermark)."""
    return json.dumps(
        {
            "name": "c",
            "time": 1,
            "topics": {
                TOPIC: {
                    "topic": TOPIC,
                    "partitions": {
                        str(n): {
                            "partition": n,
                            "desired": True,
                            "fetch_state": "active",
                            "committed_offset": committed,
                            "hi_offset": high,
                            "lo_offset": 0,
                        }
                        for n, (committed, high) in partitions.items()
                    },
                }
            },
        }
    )


def _lag(group: str) -> dict[str, float]:
    return {
        partition: REGISTRY.get_sample_value(
            "kafka_consumergroup_group_lag", {"group": group, "topic": TOPIC, "partition": partition}
        )
        or 0.0
        for partition in ("0", "1", "2")
    }


def test_lag_counts_what_arrived_on_a_partition_the_statistics_no_longer_fetch() -> None:
    # Partition 2 was paused before its 4 newest messages came: the statistics still say 10.
    broker = Broker({(TOPIC, 0): 14, (TOPIC, 1): 12, (TOPIC, 2): 14})
    tracker = ConsumerLagTracker(Settings(topic_prefix="u."), "g-paused", reader=broker)
    tracker.on_stats(_stats({0: (10, 14), 1: (8, 12), 2: (10, 10)}))
    assert _lag("g-paused") == {"0": 4.0, "1": 4.0, "2": 0.0}
    tracker.refresh_seconds()
    assert broker.asked == [[(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)]]
    assert _lag("g-paused") == {"0": 4.0, "1": 4.0, "2": 4.0}
    assert REGISTRY.get_sample_value("kafka_consumergroup_group_max_lag", {"group": "g-paused"}) == 4.0
    # The next statistics, still stale for partition 2, do not take its lag back.
    tracker.on_stats(_stats({0: (14, 14), 1: (12, 12), 2: (10, 10)}))
    assert _lag("g-paused") == {"0": 0.0, "1": 0.0, "2": 4.0}


def test_a_stale_answer_never_lowers_what_the_statistics_saw() -> None:
    broker = Broker({(TOPIC, 0): 5})  # an answer older than the fetch the statistics report
    tracker = ConsumerLagTracker(Settings(topic_prefix="u."), "g-older", reader=broker)
    tracker.on_stats(_stats({0: (5, 9)}))
    tracker.refresh_seconds()
    assert _lag("g-older")["0"] == 4.0
