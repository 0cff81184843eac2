"""Replication health of the pipeline's topics, from the cluster's metadata (what
`kafka-topics --describe --under-replicated-partitions` and `--under-min-isr-partitions`
show): a partition is under-replicated when fewer replicas are in sync than it has (a broker
is down or behind; one more failure may stop it), and refuses acks=all writes when it has no
leader or fewer in-sync replicas than ``min.insync.replicas`` (the services then retry and
opt-outs wait; nothing is lost). ``optout run exporter`` exports both per topic."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka.admin._metadata import ClusterMetadata


@dataclass(frozen=True)
class PartitionState:
    leader: int  # -1: none
    replicas: int
    in_sync: int


@dataclass(frozen=True)
class TopicHealth:
    under_replicated: int
    unwritable: int


def topic_health(partitions: Iterable[PartitionState], min_insync_replicas: int) -> TopicHealth:
    states = list(partitions)
    under = sum(1 for p in states if p.in_sync < p.replicas)
    unwritable = sum(1 for p in states if p.leader < 0 or p.in_sync < min_insync_replicas)
    return TopicHealth(under, unwritable)


def from_metadata(
    metadata: ClusterMetadata, topics: Iterable[str], min_insync_replicas: int
) -> dict[str, TopicHealth]:
    """Health of each of ``topics`` the metadata lists."""
    out: dict[str, TopicHealth] = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is None:
            continue
        states = (PartitionState(p.leader, len(p.replicas), len(p.isrs)) for p in topic.partitions.values())
        out[name] = topic_health(states, min_insync_replicas)
    return out
