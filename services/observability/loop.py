"""What watches a consume loop: its consumer lag (from librdkafka statistics) and its
heartbeat for ``/healthz``. Services wire it into ``ConsumerLoop`` as its observer, so
``services/common`` never imports observability."""

from __future__ import annotations

from typing import Any, Protocol

from services.common.settings import Settings
from services.observability.consumer_lag import STATS_INTERVAL_MS, ConsumerLagTracker
from services.observability.health import HEALTH, HealthState, liveness_limit


class LagTracker(Protocol):
    def on_stats(self, raw: str) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LoopObservability:
    """``LoopObserver`` of one consume loop: lag gauges of ``group`` and a liveness entry
    ``service[group]`` that every poll refreshes."""

    def __init__(
        self,
        settings: Settings,
        service: str,
        group: str,
        health: HealthState = HEALTH,
        lag: LagTracker | None = None,
    ) -> None:
        self.name = f"{service}[{group}]"
        self.lag: LagTracker = lag or ConsumerLagTracker(settings, group)
        self._health = health
        self._limit = liveness_limit(settings)
        self._stats_interval_set = "statistics.interval.ms" in settings.kafka_extra

    def consumer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"stats_cb": self.lag.on_stats}
        if not self._stats_interval_set:
            config["statistics.interval.ms"] = STATS_INTERVAL_MS
        return config

    def started(self) -> None:
        self._health.register_loop(self.name, self._limit)
        self.lag.start()

    def beat(self) -> None:
        self._health.beat(self.name)

    def stopped(self) -> None:
        try:
            self.lag.stop()
        finally:
            self._health.unregister_loop(self.name)


def observe_loop(
    settings: Settings, service: str, group: str | None = None, health: HealthState = HEALTH
) -> LoopObservability:
    """The observer of ``service``'s loop in ``group`` (default: the service's group)."""
    return LoopObservability(settings, service, group or settings.group(service), health)
