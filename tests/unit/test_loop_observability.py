"""The consume loop knows observability only through its ``LoopObserver`` hook
(issue #10, the house): ``services/common`` imports no service, and the observer that
services wire in keeps lag statistics and /healthz working."""

from __future__ import annotations

import ast
from pathlib import Path

from services.common.settings import Settings
from services.observability.consumer_lag import STATS_INTERVAL_MS
from services.observability.health import HealthState
from services.observability.loop import LoopObservability

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_services_common_imports_no_service() -> None:
    def foreign(module: str) -> bool:
        return module.startswith("services.") and not module.startswith("services.common")

    offenders = {
        str(path.relative_to(ROOT)): sorted(filter(foreign, _imported_modules(path)))
        for path in (ROOT / "services" / "common").rglob("*.py")
    }
    assert {p: m for p, m in offenders.items() if m} == {}


class FakeLag:
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_stats(self, raw: str) -> None:
        self.events.append("stats")

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        self.events.append("stop")


def test_the_observer_wires_lag_statistics_and_liveness() -> None:
    now = [100.0]
    health = HealthState(monotonic=lambda: now[0])
    lag = FakeLag()
    settings = Settings(topic_prefix="u.", max_poll_interval_ms=20_000)
    observer = LoopObservability(settings, "intake", "u.optout.intake", health=health, lag=lag)
    config = observer.consumer_config()
    assert config["statistics.interval.ms"] == STATS_INTERVAL_MS
    config["stats_cb"]("{}")
    observer.started()
    assert health.readiness()[1]["checks"]["loop:intake[u.optout.intake]"]["ok"] is False  # not polled yet
    now[0] += 9.0
    assert health.liveness()[0] is True  # within half of max.poll.interval.ms (10 s)
    now[0] += 2.0
    assert health.liveness()[0] is False
    observer.beat()
    assert health.liveness()[0] is True and health.readiness()[0] is True
    observer.stopped()
    assert health.liveness()[1]["loops"] == {}
    assert lag.events == ["stats", "start", "stop"]


def test_statistics_interval_from_kafka_extra_is_kept() -> None:
    settings = Settings(kafka_extra={"statistics.interval.ms": "1000"})
    observer = LoopObservability(settings, "intake", "g", health=HealthState(), lag=FakeLag())
    assert "statistics.interval.ms" not in observer.consumer_config()
