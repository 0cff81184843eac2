"""``optout run exporter``: the SRE's outside view, exported for Prometheus.

Every ``interval`` seconds it samples every pipeline consumer group (lag in messages
and seconds, Burrow-style status; what ``optout lag`` shows), the replication of the
pipeline's topics (``replication.py``) and reads the business view from PostgreSQL (and
the last ``optout reconcile`` report per destination, ``reconcile.py``). It
sees a group even when its service is stopped, which the service's own ``/metrics``
cannot. A failing source is logged and retried at the next interval; the other keeps
being exported; ``..._timestamp_seconds`` gauges tell how fresh each is.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from confluent_kafka import KafkaException

from services.common import metrics
from services.common.clock import Clock, SystemClock
from services.common.db import LazyConnection, first_line
from services.common.errors import RetriableError
from services.common.kafka import make_admin
from services.common.logging import get_logger
from services.common.settings import Settings
from services.observability import business, reconcile, replication
from services.observability.group_lag import GroupLagMonitor, GroupReport, GroupSpec, pipeline_groups
from services.observability.health import HEALTH
from services.observability.lag import Status

log = get_logger(__name__)

SERVICE = "exporter"
_PartitionLabels = tuple[str, str, str]


class GroupLagExporter:
    """Sets the ``kafka_consumergroup_*`` and ``optout_consumergroup_*`` gauges from reports."""

    def __init__(self) -> None:
        self._exported: set[_PartitionLabels] = set()

    def export(self, reports: Sequence[GroupReport]) -> None:
        current: set[_PartitionLabels] = set()
        for report in reports:
            for p in report.partitions:
                labels = (report.group, p.topic, str(p.partition))
                current.add(labels)
                metrics.GROUP_LAG.labels(*labels).set(p.lag)
                if p.lag_seconds is not None:
                    metrics.GROUP_LAG_SECONDS.labels(*labels).set(p.lag_seconds)
                if p.committed is not None:
                    metrics.GROUP_OFFSET.labels(*labels).set(p.committed)
                metrics.PARTITION_LATEST_OFFSET.labels(p.topic, str(p.partition)).set(p.end)
                metrics.PARTITION_STATUS.labels(*labels).set(int(p.status))
            metrics.GROUP_MAX_LAG.labels(report.group).set(report.max_lag)
            metrics.GROUP_MAX_LAG_SECONDS.labels(report.group).set(report.max_lag_seconds)
            for status in Status:
                if status is not Status.ERR:
                    metrics.GROUP_STATUS.labels(report.group, status.name).set(
                        1 if report.status is status else 0
                    )
        for labels in self._exported - current:
            for gauge in (
                metrics.GROUP_LAG,
                metrics.GROUP_LAG_SECONDS,
                metrics.GROUP_OFFSET,
                metrics.PARTITION_STATUS,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._exported = current


class Exporter:
    def __init__(
        self,
        settings: Settings,
        specs: Sequence[GroupSpec] | None = None,
        clock: Clock | None = None,
        monitor: GroupLagMonitor | None = None,
    ) -> None:
        self.settings = settings
        self.specs = list(specs) if specs is not None else pipeline_groups(settings)
        self.clock = clock or SystemClock()
        self.monitor = monitor or GroupLagMonitor(settings)
        self.lag = GroupLagExporter()
        self._admin = make_admin(settings)
        self._db = LazyConnection(
            settings.dsn(), autocommit=True, prepared_statements=settings.database_prepared_statements
        )
        self.last_reports: list[GroupReport] = []
        business.init_zeros(self.settings.destinations.names)

    def refresh(self) -> None:
        self.refresh_lag()
        self.refresh_replication()
        self.refresh_business()

    def refresh_replication(self) -> None:
        """Under-replicated and unwritable partitions of the pipeline's topics."""
        try:
            metadata = self._admin.list_topics(timeout=10)
        except KafkaException as exc:
            log.warning(
                "reading the cluster's metadata failed; retrying next interval",
                error=exc.args[0].str() if exc.args else str(exc),
            )
            return
        # Without the setting, the broker's default: at least the leader itself must be in sync.
        min_isr = self.settings.topic_min_insync_replicas or 1
        health = replication.from_metadata(metadata, self.settings.all_topics(), min_isr)
        for topic, state in health.items():
            metrics.UNDER_REPLICATED_PARTITIONS.labels(topic).set(state.under_replicated)
            metrics.UNWRITABLE_PARTITIONS.labels(topic).set(state.unwritable)
        short = {t: h.under_replicated for t, h in health.items() if h.under_replicated}
        if short:
            log.warning("partitions under-replicated", partitions=short)

    def refresh_lag(self) -> None:
        try:
            reports = self.monitor.sample(self.specs)
        except KafkaException as exc:
            log.warning(
                "reading consumer group offsets failed; retrying next interval",
                error=exc.args[0].str() if exc.args else str(exc),
            )
            return
        self.lag.export(reports)
        self.last_reports = reports
        metrics.LAG_SAMPLED.set(self.clock.now().timestamp())
        lagging = [r for r in reports if r.status is not Status.OK]
        log.info(
            "consumer groups sampled",
            groups=len(reports),
            not_ok={r.group: r.status.name for r in lagging},
            total_lag=sum(r.total_lag for r in reports),
        )

    def refresh_business(self) -> None:
        now = self.clock.now().astimezone(UTC)
        try:
            snapshot = business.query_snapshot(
                self._db.get(), now, timedelta(days=self.settings.retention_days)
            )
        except (RetriableError, psycopg.Error) as exc:
            self._drop()
            log.warning("reading the business view failed; retrying next interval", error=first_line(exc))
            return
        business.export(snapshot, now, self.settings.destinations.names)
        try:
            reconcile.export(self._db.get())
        except (RetriableError, psycopg.Error) as exc:
            self._drop()
            log.warning("reading the reconcile reports failed; retrying next interval", error=first_line(exc))

    def _drop(self) -> None:
        self._db.close()

    def close(self) -> None:
        self._drop()
        self.monitor.close()


def run(
    settings: Settings,
    stop: threading.Event,
    interval: float | None = None,
    specs: Sequence[GroupSpec] | None = None,
) -> None:
    interval = interval if interval is not None else settings.exporter_interval_seconds
    exporter = Exporter(settings, specs)
    HEALTH.register_loop(SERVICE, max_silence=max(60.0, 4 * interval))
    log.info("exporting", groups=[s.group for s in exporter.specs], interval_seconds=interval)
    try:
        while not stop.is_set():
            started = datetime.now(UTC)
            exporter.refresh()
            HEALTH.beat(SERVICE)
            elapsed = (datetime.now(UTC) - started).total_seconds()
            stop.wait(max(0.0, interval - elapsed))
    finally:
        HEALTH.unregister_loop(SERVICE)
        exporter.close()
