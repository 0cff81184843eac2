"""Lag of whole consumer groups, seen from outside (what ``optout lag`` and the exporter use).

Needs no service running: committed offsets come from the group coordinator
(``ListConsumerGroupOffsets``), end offsets from ``ListOffsets``, partition owners from
``DescribeConsumerGroups``, and the lag in seconds from the timestamp of the message at
the committed offset. Each ``sample`` adds an observation to every partition's sliding
window (kept in memory across samples) and evaluates it with Burrow's rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from services.common.kafka import make_admin
from services.common.settings import Settings
from services.observability.lag import (
    DEFAULT_REPEAT_AFTER,
    DEFAULT_WINDOW,
    PartitionWindow,
    Status,
    burrow_group_status,
    lag_seconds,
    message_lag,
    worst,
)
from services.observability.lag_seconds import OffsetTimestampReader, TopicPartitionKey, reader_config

# Seconds each admin or offsets request may take (the exporter's; ``optout lag --timeout``
# passes its own). ``fetch`` tries a group up to 3 times, so an unreachable broker costs about
# 3 x this per group: callers that must answer fast check ``reachable`` first.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class GroupSpec:
    """A group, and the topics it consumes when known (so uncommitted partitions show too)."""

    group: str
    topics: tuple[str, ...] = ()


def pipeline_groups(settings: Settings) -> list[GroupSpec]:
    """Every consumer group of the pipeline: intake, confirmer and one per destination."""
    specs = [
        GroupSpec(settings.group("intake"), (settings.requests_topic,)),
        GroupSpec(settings.group("confirmer"), (settings.acks_topic,)),
    ]
    specs.extend(
        GroupSpec(settings.group(f"connector.{d.id}"), (settings.suppress_topic(d.id),))
        for d in settings.destinations
    )
    return specs


@dataclass(frozen=True)
class GroupOffsets:
    """What the cluster says about one group at one moment (the I/O result)."""

    group: str
    state: str
    members: int
    committed: dict[TopicPartitionKey, int | None]
    start: dict[TopicPartitionKey, int]
    end: dict[TopicPartitionKey, int]
    owners: dict[TopicPartitionKey, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionReport:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    lag_seconds: float | None
    owner: str | None
    status: Status
    commits_in_window: int

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "owner": self.owner,
            "status": self.status.name,
            "commits_in_window": self.commits_in_window,
        }


@dataclass(frozen=True)
class GroupReport:
    group: str
    state: str
    members: int
    partitions: tuple[PartitionReport, ...]
    sampled_at: float

    @property
    def status(self) -> Status:
        """The worst partition status (OK, WARN, STOP, STALL or REWIND)."""
        return worst(p.status for p in self.partitions)

    @property
    def burrow_status(self) -> Status:
        return burrow_group_status(self.status)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def max_lag(self) -> int:
        return max((p.lag for p in self.partitions), default=0)

    @property
    def max_lag_seconds(self) -> float:
        return max((p.lag_seconds or 0.0 for p in self.partitions), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "status": self.status.name,
            "burrow_status": self.burrow_status.name,
            "total_lag": self.total_lag,
            "max_lag": self.max_lag,
            "max_lag_seconds": round(self.max_lag_seconds, 3),
            "sampled_at": round(self.sampled_at, 3),
            "partitions": [p.to_json() for p in self.partitions],
        }


def evaluate_group(
    raw: GroupOffsets,
    windows: dict[tuple[str, str, int], PartitionWindow],
    now: float,
    stamps: dict[TopicPartitionKey, int | None],
    window_size: int = DEFAULT_WINDOW,
    repeat_after: float = DEFAULT_REPEAT_AFTER,
) -> GroupReport:
    """Add ``raw`` to the windows and judge every partition (pure but for the windows)."""
    reports = []
    for tp in sorted(set(raw.committed) | set(raw.end)):
        topic, partition = tp
        end = raw.end.get(tp)
        if end is None:
            continue
        start = raw.start.get(tp, 0)
        committed = raw.committed.get(tp)
        lag = message_lag(committed, end, start)
        owner = raw.owners.get(tp)
        window = windows.setdefault((raw.group, topic, partition), PartitionWindow(window_size, repeat_after))
        position = committed if committed is not None and committed >= 0 else start
        window.observe(position, lag, now, owned=owner is not None, end=end)
        reports.append(
            PartitionReport(
                topic=topic,
                partition=partition,
                committed=committed if committed is not None and committed >= 0 else None,
                end=end,
                lag=lag,
                lag_seconds=lag_seconds(int(now * 1000), stamps.get(tp), lag),
                owner=owner,
                status=window.evaluate(lag, now),
                commits_in_window=len(window.samples),
            )
        )
    return GroupReport(raw.group, raw.state, raw.members, tuple(reports), now)


class GroupLagMonitor:
    """Samples groups' lag; keeps each partition's window across samples."""

    def __init__(
        self,
        settings: Settings,
        window: int = DEFAULT_WINDOW,
        reader: OffsetTimestampReader | None = None,
        wall_clock: Callable[[], float] = time.time,
        repeat_after: float = DEFAULT_REPEAT_AFTER,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._repeat_after = repeat_after
        self._timeout = request_timeout
        self._admin: AdminClient = make_admin(settings)
        # Reads watermarks only: never subscribes or commits, so it joins no group.
        self._offsets = Consumer({**reader_config(settings), "client.id": "optout-lag-offsets"})
        self._window = window
        self._reader = reader or OffsetTimestampReader(settings, min_interval=1.0)
        self._now = wall_clock
        self.windows: dict[tuple[str, str, int], PartitionWindow] = {}

    def reachable(self) -> None:
        """One metadata request within the request timeout; raises ``KafkaException``
        ("Local: Timed out" and the like) when no broker answers."""
        self._admin.list_topics(timeout=self._timeout)

    def sample(self, specs: Sequence[GroupSpec]) -> list[GroupReport]:
        fetched = [self.fetch(spec) for spec in specs]
        reports = []
        for raw in fetched:
            wanted: dict[TopicPartitionKey, int] = {}
            for tp, end in raw.end.items():
                committed, start = raw.committed.get(tp), raw.start.get(tp, 0)
                if message_lag(committed, end, start) > 0:
                    wanted[tp] = start if committed is None else max(committed, start)
            stamps = self._reader.timestamps(wanted) if wanted else {}
            reports.append(
                evaluate_group(raw, self.windows, self._now(), stamps, self._window, self._repeat_after)
            )
        return reports

    @retry(
        retry=retry_if_exception_type(KafkaException),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def fetch(self, spec: GroupSpec) -> GroupOffsets:
        state, members, owners = self._describe(spec.group)
        partitions = self._partitions(spec.topics) if spec.topics else []
        committed = self._committed(spec.group, partitions)
        keys = sorted(set(partitions) | set(committed) | set(owners))
        start, end = self._watermarks(keys)
        return GroupOffsets(spec.group, state, members, committed, start, end, owners)

    def _describe(self, group: str) -> tuple[str, int, dict[TopicPartitionKey, str]]:
        future = self._admin.describe_consumer_groups([group], request_timeout=self._timeout)[group]
        description = future.result()
        owners: dict[TopicPartitionKey, str] = {}
        for member in description.members:
            assignment = member.assignment.topic_partitions if member.assignment else []
            for tp in assignment:
                owners[(tp.topic, tp.partition)] = f"{member.client_id}@{member.host}"
        state = description.state.name if description.state is not None else "UNKNOWN"
        return state, len(description.members), owners

    def _partitions(self, topics: Iterable[str]) -> list[TopicPartitionKey]:
        out: list[TopicPartitionKey] = []
        for topic in topics:
            metadata = self._admin.list_topics(topic=topic, timeout=self._timeout)
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                continue
            out.extend((topic, p) for p in sorted(info.partitions))
        return out

    def _committed(
        self, group: str, partitions: list[TopicPartitionKey]
    ) -> dict[TopicPartitionKey, int | None]:
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(t, p) for t, p in partitions] if partitions else None
        )
        future = self._admin.list_consumer_group_offsets([request], request_timeout=self._timeout)
        result = future[group].result()
        committed: dict[TopicPartitionKey, int | None] = {tp: None for tp in partitions}
        for tp in result.topic_partitions or []:
            if tp.error is not None:
                continue
            committed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return committed

    def _watermarks(
        self, keys: list[TopicPartitionKey]
    ) -> tuple[dict[TopicPartitionKey, int], dict[TopicPartitionKey, int]]:
        if not keys:
            return {}, {}
        start: dict[TopicPartitionKey, int] = {}
        end: dict[TopicPartitionKey, int] = {}
        for topic, partition in keys:
            low, high = self._offsets.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self._timeout, cached=False
            )
            start[(topic, partition)], end[(topic, partition)] = low, high
        return start, end

    def close(self) -> None:
        self._reader.close()
        self._offsets.close()
