"""Replication health of a topic from the cluster's metadata (issue #14): what the exporter
turns into optout_kafka_under_replicated_partitions and optout_kafka_unwritable_partitions."""

from __future__ import annotations

from services.observability.replication import PartitionState, TopicHealth, topic_health


def test_all_in_sync_is_healthy() -> None:
    parts = [PartitionState(leader=i % 3 + 1, replicas=3, in_sync=3) for i in range(6)]
    assert topic_health(parts, min_insync_replicas=2) == TopicHealth(0, 0)


def test_one_broker_down_leaves_partitions_under_replicated_but_writable() -> None:
    parts = [PartitionState(1, 3, 2), PartitionState(2, 3, 2), PartitionState(3, 3, 3)]
    assert topic_health(parts, min_insync_replicas=2) == TopicHealth(under_replicated=2, unwritable=0)


def test_below_min_isr_or_without_a_leader_refuses_writes() -> None:
    parts = [PartitionState(1, 3, 1), PartitionState(-1, 3, 0), PartitionState(2, 3, 3)]
    assert topic_health(parts, min_insync_replicas=2) == TopicHealth(under_replicated=2, unwritable=2)


def test_a_single_broker_topic_is_healthy_with_its_one_copy() -> None:
    assert topic_health([PartitionState(1, 1, 1)] * 3, min_insync_replicas=1) == TopicHealth(0, 0)
    assert topic_health([PartitionState(-1, 1, 0)], min_insync_replicas=1) == TopicHealth(1, 1)  # offline
