"""A service's own consumer lag, from librdkafka statistics, as Prometheus gauges.

``on_stats`` is the consumer's ``stats_cb`` (it runs on the poll thread, so it only
parses and sets the message-lag gauges). A background thread, every interval, asks the
broker for each partition's high watermark (the statistics carry the one the last fetch
saw, and a partition paused while a batch waits for its retry is not fetched: its lag
would stop growing exactly when it matters) and adds the lag in seconds: it reads the
timestamp of the message at each lagging partition's committed offset with its own
non-group consumer (``OffsetTimestampReader``), away from the poll loop.
Series of partitions this member no longer owns are removed, so a revoked partition
does not keep reporting a stale lag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable

from services.common import metrics
from services.common.logging import get_logger
from services.common.settings import Settings
from services.observability.lag import lag_seconds
from services.observability.lag_seconds import OffsetTimestampReader, TopicPartitionKey
from services.observability.stats import ConsumerStats, PartitionOffsets, parse_stats

log = get_logger(__name__)

STATS_INTERVAL_MS = 5_000


class ConsumerLagTracker:
    def __init__(
        self,
        settings: Settings,
        group: str,
        interval: float = STATS_INTERVAL_MS / 1000,
        reader: OffsetTimestampReader | None = None,
        on_snapshot: Callable[[ConsumerStats], None] | None = None,
    ) -> None:
        self.group = group
        self.interval = interval
        self._reader = reader or OffsetTimestampReader(settings, min_interval=interval)
        self._on_snapshot = on_snapshot
        self._lock = threading.Lock()
        self._latest: ConsumerStats | None = None
        self._exported: set[TopicPartitionKey] = set()
        self._highs: dict[TopicPartitionKey, int] = {}  # high watermarks asked of the broker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- stats_cb (poll thread) ------------------------------------------------------------
    def on_stats(self, raw: str) -> None:
        try:
            snapshot = parse_stats(raw)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            log.warning("unreadable librdkafka statistics", error=str(exc))
            return
        with self._lock:
            self._latest = snapshot
            self._export_offsets(snapshot.partitions)
        if self._on_snapshot is not None:
            self._on_snapshot(snapshot)

    def _fresh(self, partitions: tuple[PartitionOffsets, ...]) -> tuple[PartitionOffsets, ...]:
        """``partitions`` with the newer of the two high watermarks (the statistics' and the
        broker's last answer): a high watermark never goes back."""
        return tuple(
            dataclasses.replace(p, high=high)
            if (high := self._highs.get((p.topic, p.partition), -1)) > p.high
            else p
            for p in partitions
        )

    def _export_offsets(self, partitions: tuple[PartitionOffsets, ...]) -> None:
        partitions = self._fresh(partitions)
        current = {(p.topic, p.partition) for p in partitions}
        self._highs = {key: high for key, high in self._highs.items() if key in current}
        for topic, partition in self._exported - current:
            labels = (self.group, topic, str(partition))
            for gauge in (metrics.GROUP_LAG, metrics.GROUP_LAG_SECONDS, metrics.GROUP_OFFSET):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        for p in partitions:
            labels = (self.group, p.topic, str(p.partition))
            metrics.GROUP_LAG.labels(*labels).set(p.lag)
            metrics.GROUP_OFFSET.labels(*labels).set(p.committed)
            metrics.PARTITION_LATEST_OFFSET.labels(p.topic, str(p.partition)).set(p.high)
            if p.lag == 0:
                metrics.GROUP_LAG_SECONDS.labels(*labels).set(0)
        metrics.GROUP_MAX_LAG.labels(self.group).set(max((p.lag for p in partitions), default=0))
        self._exported = current

    # --- lag in seconds (background thread) ------------------------------------------------
    def refresh_seconds(self) -> None:
        with self._lock:
            snapshot = self._latest
        if snapshot is None:
            return
        highs = self._reader.high_watermarks((p.topic, p.partition) for p in snapshot.partitions)
        with self._lock:
            self._highs.update(highs)
            snapshot = self._latest or snapshot  # statistics that came meanwhile are newer
            self._export_offsets(snapshot.partitions)
            partitions = self._fresh(snapshot.partitions)
        lagging = {(p.topic, p.partition): p.committed for p in partitions if p.lag > 0}
        stamps = self._reader.timestamps(lagging) if lagging else {}
        now_ms = int(time.time() * 1000)
        ages: list[float] = []
        with self._lock:
            owned = self._exported
            for p in partitions:
                if (p.topic, p.partition) not in owned:
                    continue
                age = lag_seconds(now_ms, stamps.get((p.topic, p.partition)), p.lag)
                if age is None:
                    continue
                ages.append(age)
                metrics.GROUP_LAG_SECONDS.labels(self.group, p.topic, str(p.partition)).set(age)
            metrics.GROUP_MAX_LAG_SECONDS.labels(self.group).set(max(ages, default=0.0))

    def start(self) -> None:
        metrics.GROUP_MAX_LAG.labels(self.group).set(0)
        metrics.GROUP_MAX_LAG_SECONDS.labels(self.group).set(0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"lag-{self.group}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.refresh_seconds()
        finally:
            self._reader.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            self._export_offsets(())
