"""Parse librdkafka's statistics JSON (``statistics.interval.ms`` + ``stats_cb``).

For a consumer, ``topics.<topic>.partitions.<n>`` carries, per partition the client
knows, ``committed_offset`` (the group's committed offset), ``hi_offset`` (high
watermark), ``lo_offset`` (low watermark) and ``app_offset`` (position). librdkafka
lists an internal partition ``-1`` (UA, unassigned) that is never a real partition, and
uses -1001 (RD_KAFKA_OFFSET_INVALID) for "no offset known": both are skipped. Only the
partitions this member consumes (``desired`` or actively fetched) are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.observability.lag import NO_OFFSET, message_lag


@dataclass(frozen=True)
class PartitionOffsets:
    topic: str
    partition: int
    committed: int
    high: int
    low: int | None

    @property
    def lag(self) -> int:
        return message_lag(self.committed, self.high, self.low if self.low is not None else 0)


@dataclass(frozen=True)
class ConsumerStats:
    client: str
    time: float  # unix seconds the statistics were emitted
    group_state: str | None
    assignment_size: int | None
    brokers_up: int
    partitions: tuple[PartitionOffsets, ...]


def _valid(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _consuming(entry: dict[str, Any]) -> bool:
    return bool(entry.get("desired")) or entry.get("fetch_state") not in (None, "none", "stopped")


def parse_partitions(stats: dict[str, Any]) -> list[PartitionOffsets]:
    out: list[PartitionOffsets] = []
    topics = stats.get("topics") or {}
    for topic_name, topic in sorted(topics.items()):
        partitions = (topic or {}).get("partitions") or {}
        for key, entry in partitions.items():
            if not isinstance(entry, dict):
                continue
            number = entry.get("partition", key)
            try:
                partition = int(number)
            except (TypeError, ValueError):
                continue
            if partition < 0 or not _consuming(entry):
                continue
            committed = entry.get("committed_offset", NO_OFFSET)
            high = entry.get("hi_offset", NO_OFFSET)
            if not (_valid(committed) and _valid(high)):
                continue
            low = entry.get("lo_offset")
            out.append(
                PartitionOffsets(
                    topic=str(topic.get("topic", topic_name)),
                    partition=partition,
                    committed=committed,
                    high=high,
                    low=low if isinstance(low, int) and _valid(low) else None,
                )
            )
    return sorted(out, key=lambda p: (p.topic, p.partition))


def parse_stats(raw: str | bytes) -> ConsumerStats:
    """Parse one statistics document. Raises ``ValueError`` when it is not a JSON object."""
    stats = json.loads(raw)
    if not isinstance(stats, dict):
        raise ValueError("librdkafka statistics are not a JSON object")
    cgrp = stats.get("cgrp") if isinstance(stats.get("cgrp"), dict) else None
    brokers = stats.get("brokers") or {}
    up = sum(
        1
        for b in brokers.values()
        if isinstance(b, dict) and b.get("state") == "UP" and b.get("nodeid", 0) >= 0
    )
    emitted = stats.get("time")
    return ConsumerStats(
        client=str(stats.get("name", "")),
        time=float(emitted) if isinstance(emitted, int | float) else 0.0,
        group_state=str(cgrp["state"]) if cgrp and "state" in cgrp else None,
        assignment_size=int(cgrp["assignment_size"]) if cgrp and "assignment_size" in cgrp else None,
        brokers_up=up,
        partitions=tuple(parse_partitions(stats)),
    )
