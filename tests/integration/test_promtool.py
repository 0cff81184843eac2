"""Prometheus rules and configuration checked and unit-tested by promtool (issue: observability).

promtool comes with Debian's prometheus package (deploy/install-promtool.sh installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (run deploy/install-promtool.sh)"
)


def promtool(*args: str, cwd: Path = DEPLOY / "prometheus") -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_and_config_are_valid():
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert re.search(r"SUCCESS: \d+ rules found", rules.stdout)
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_alert_rule_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path):
    # The rule tests are not vacuous: with the lag threshold moved they fail.
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert "kafka_consumergroup_group_max_lag_seconds) > 300" in alerts
    (tmp_path / "alerts.yml").write_text(
        alerts.replace(
            "kafka_consumergroup_group_max_lag_seconds) > 300",
            "kafka_consumergroup_group_max_lag_seconds) > 3000",
        )
    )
    shutil.copy(DEPLOY / "prometheus" / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "OptoutConsumerLagHigh" in result.stdout + result.stderr


def test_grafana_dashboard_is_valid_json_with_the_required_panels():
    dashboard = json.loads((DEPLOY / "grafana" / "optout-dashboard.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"])
    for needed in (
        "Lag per group (messages)",
        "Lag per group (seconds",
        "Throughput",
        "Dead-lettered",
        "Batch processing",
        "End-to-end latency",
        "Requests by state",
        "Deadline burn-down",
    ):
        assert needed in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
