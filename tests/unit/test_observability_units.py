"""Health state, business gauge values, and that every metric the alert rules and the
dashboard query is one the code exports (issue: observability)."""

from __future__ import annotations

import importlib
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.common import metrics
from services.observability import business
from services.observability.health import CachedCheck, HealthState

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- health ----------------------------------------------------------------------------------
def test_liveness_fails_when_a_loop_stops_polling_and_recovers_on_the_next_poll() -> None:
    clock = FakeMonotonic()
    state = HealthState(clock)
    assert state.liveness()[0]  # no loop: a web-only process is live while it serves
    state.register_loop("intake", max_silence=150)
    clock.now += 149
    assert state.liveness()[0]
    clock.now += 2
    ok, body = state.liveness()
    assert not ok and body["loops"]["intake"]["ok"] is False
    state.beat("intake")
    assert state.liveness()[0]


def test_readiness_needs_every_check_and_a_polling_loop_but_no_partitions() -> None:
    state = HealthState(FakeMonotonic())
    answers: dict[str, str | None] = {"kafka": None, "database": "database: connection refused"}
    state.add_check("kafka", lambda: answers["kafka"])
    state.add_check("database", lambda: answers["database"])
    state.register_loop("intake", max_silence=150)
    ok, body = state.readiness()
    assert not ok and body["checks"]["database"]["reason"].startswith("database")
    answers["database"] = None
    assert not state.readiness()[0]  # the loop has not polled yet
    state.beat("intake")  # polled once, even with nothing assigned
    assert state.readiness()[0]


def test_cached_check_probes_at_most_once_per_ttl() -> None:
    clock = FakeMonotonic()
    calls: list[float] = []
    check = CachedCheck(lambda: calls.append(clock.now) or None, ttl=5, monotonic=clock)
    check(), check()
    clock.now += 5
    check()
    assert calls == [100.0, 105.0]


# --- business view -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("left", "label"),
    [
        (timedelta(seconds=-1), "overdue"),
        (timedelta(hours=23), "1d"),
        (timedelta(days=2), "3d"),
        (timedelta(days=6), "7d"),
        (timedelta(days=13), "14d"),
        (timedelta(days=29), "30d"),
        (timedelta(days=45), "later"),
    ],
)
def test_deadline_bucket(left: timedelta, label: str) -> None:
    assert business.deadline_bucket(left) == label


def test_gauge_values_from_rows() -> None:
    rows = [
        ("CONFIRMED", NOW - timedelta(days=9), NOW + timedelta(days=30)),
        ("PENDING", NOW - timedelta(hours=2), NOW + timedelta(days=44)),
        ("PENDING", NOW - timedelta(days=46), NOW - timedelta(days=1)),  # overdue
        ("NEEDS_ATTENTION", NOW - timedelta(days=40), NOW + timedelta(days=2)),
    ]
    values = business.gauge_values(business.snapshot_from_rows(rows, NOW), NOW, ["email_provider", "esp_b"])
    assert values["requests"] == {
        "pending": 2,
        "confirmed": 1,
        "needs_attention": 1,
        "resolved": 0,
        "overdue": 1,
    }
    assert values["oldest_age"] == timedelta(days=46).total_seconds()
    assert values["nearest_deadline"] == -86400.0
    assert values["open_by_deadline"] == {
        "overdue": 1,
        "1d": 0,
        "3d": 1,
        "7d": 0,
        "14d": 0,
        "30d": 0,
        "later": 1,
    }
    assert values["commands"][("email_provider", "rejected")] == 0
    assert values["commands"][("esp_b", "applied")] == 0  # every destination of the file


def test_nothing_open_means_no_age_and_an_infinite_deadline() -> None:
    values = business.gauge_values(business.snapshot_from_rows([], NOW), NOW, ())
    assert values["oldest_age"] == 0.0 and math.isinf(values["nearest_deadline"])
    assert set(values["requests"].values()) == {0}


def test_observe_confirmation_records_end_to_end_latency() -> None:
    name = "optout_end_to_end_latency_seconds"

    def samples() -> dict[str, float]:
        return {
            "count": REGISTRY.get_sample_value(f"{name}_count") or 0.0,
            "sum": REGISTRY.get_sample_value(f"{name}_sum") or 0.0,
            "le_1": REGISTRY.get_sample_value(f"{name}_bucket", {"le": "1.0"}) or 0.0,
            "le_300": REGISTRY.get_sample_value(f"{name}_bucket", {"le": "300.0"}) or 0.0,
            "le_900": REGISTRY.get_sample_value(f"{name}_bucket", {"le": "900.0"}) or 0.0,
        }

    # Whatever earlier tests observed stays in the process-global registry: an awkward
    # float sum like this one made exact comparisons of the deltas fail.
    metrics.observe_confirmation(NOW - timedelta(seconds=1539.142857142857), NOW)
    before = samples()
    metrics.observe_confirmation(NOW - timedelta(minutes=10), NOW)
    metrics.observe_confirmation(NOW, NOW - timedelta(seconds=5))  # clock skew: counted as 0
    after = samples()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["count"] == 2
    assert delta["sum"] == pytest.approx(600.0)
    # Bucket counts are whole numbers: the skewed one lands in le=1, the 10 minutes in le=900.
    assert (delta["le_1"], delta["le_300"], delta["le_900"]) == (1, 1, 2)


# --- deploy/ only queries metrics the code exports ------------------------------------------------
_PROMQL_WORDS = {
    "max",
    "min",
    "sum",
    "by",
    "and",
    "or",
    "on",
    "rate",
    "increase",
    "delta",
    "changes",
    "histogram_quantile",
    "time",
    "le",
    "without",
    "count",
    "avg",
    "unless",
    "ignoring",
    "up",
    "bool",
    "offset",
}


def _metric_names_in(exprs: list[str]) -> set[str]:
    names: set[str] = set()
    for expr in exprs:
        stripped = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]|\b(?:by|on|without|ignoring)\s*\([^)]*\)', " ", expr)
        names |= {w for w in re.findall(r"[a-z_][a-z0-9_]*", stripped) if w not in _PROMQL_WORDS}
    return names


def _exported_names() -> set[str]:
    # Every module defining metrics the alerts or the dashboard query (whatever else the
    # test process imported): the result does not depend on which tests ran before.
    modules = (
        "services.connectors.kit",
        "services.lookup.app",
        "services.inbound.app",
        "services.intake.enrich",
        "services.intake.step",
        "services.web.app",
        "services.observability.reconcile",
    )
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names |= {f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum")}
    return names


def test_alert_rules_and_dashboard_query_only_exported_metrics() -> None:
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = [m.group(1) for m in re.finditer(r"expr: \|?\n?((?:.|\n)*?)\n\s+(?:for|labels):", alerts)]
    dashboard = json.loads((DEPLOY / "grafana" / "optout-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    unknown = _metric_names_in(exprs) - _exported_names()
    assert not unknown, f"queried but never exported: {sorted(unknown)}"
