"""The issue's "done when": with the pipeline under load and one connector stopped, the
connector's lag in messages and seconds rises in /metrics and in ``optout lag`` (status
OK -> STOP), the oldest unconfirmed request's age rises, and the matching alert rules fire
in a promtool test built from the very series scraped; restarting the connector brings
everything back to OK (issue: observability).

Intake, confirmer, the email provider connector and its stand-in run as ``optout run``
processes; the exporter runs in this process (sampling every 2 s) behind a real
/metrics endpoint, which is scraped like Prometheus would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import Settings
from services.observability import exporter
from services.observability.group_lag import GroupSpec
from services.observability.health import HealthServer
from services.publisher.publish import RequestPublisher
from tests.e2e.obs_support import ServiceProcesses
from tests.support.pipeline import isolated_settings, running, wait_until

# Services as separate processes (and a browser): one such test at a time on one worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("service-processes")]

DEST = "email_provider"
PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
SCRAPES_AFTER_STOP = 18  # promtool test: one scrape = one minute; OptoutConsumerStopped needs 10m + 5m


class Scraper:
    """Scrapes /metrics and keeps the series of the stopped connector's group."""

    def __init__(self, port: int, group: str) -> None:
        self.port = port
        self.group = group
        self.rows: list[dict[str, Any]] = []

    def scrape(self) -> dict[str, Any]:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        row: dict[str, Any] = {
            "t": time.time(),
            "lag": {},
            "offset": {},
            "lag_seconds": {},
            "status": {},
            "max_lag_seconds": 0.0,
            "oldest_age": 0.0,
            "pending": 0.0,
        }
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = s.labels
                if labels.get("group") not in (None, self.group):
                    continue
                if s.name == "kafka_consumergroup_group_lag":
                    row["lag"][labels["partition"]] = s.value
                elif s.name == "kafka_consumergroup_group_offset":
                    row["offset"][labels["partition"]] = s.value
                elif s.name == "kafka_consumergroup_group_lag_seconds":
                    row["lag_seconds"][labels["partition"]] = s.value
                elif s.name == "optout_consumergroup_status":
                    row["status"][labels["status"]] = s.value
                elif s.name == "kafka_consumergroup_group_max_lag_seconds":
                    row["max_lag_seconds"] = s.value
                elif s.name == "optout_oldest_unconfirmed_request_age_seconds":
                    row["oldest_age"] = s.value
                elif s.name == "optout_requests" and labels.get("state") == "pending":
                    row["pending"] = s.value
        self.rows.append(row)
        return row

    @staticmethod
    def status(row: dict[str, Any]) -> str | None:
        return next((k for k, v in row["status"].items() if v == 1), None)


def optout_lag(cfg: Settings, group: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "OPTOUT_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
        "OPTOUT_TOPIC_PREFIX": cfg.topic_prefix,
        "OPTOUT_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        # a generous --timeout: the machine is busy with this very test's pipeline
        [sys.executable, "-m", "services.cli.main", "lag", "--group", group, "--json", "--timeout", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)["groups"][0]
    return report


class Load:
    """Publishes a few email opt-outs every 0.5 s until stopped."""

    def __init__(self, cfg: Settings) -> None:
        self.publisher = RequestPublisher(cfg)
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            batch = [
                self.publisher.prepare(
                    {
                        "event_id": f"evt-{uuid.uuid4()}",
                        "email": f"load-{uuid.uuid4().hex[:8]}@example.com",
                        "scopes": ["EMAIL_MARKETING"],
                        "source": "API",
                    }
                )
                for _ in range(4)
            ]
            self.sent += self.publisher.publish(batch)
            self.stop.wait(0.5)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)


def promtool_test_from(rows: list[dict[str, Any]], group: str, topic: str) -> tuple[str, int]:
    """A promtool unit test whose input series are the scraped values (one scrape per minute)
    and whose expectations follow from them; returns the YAML and the evaluation minute."""

    def values(key: str, partition: str | None = None) -> str:
        out = []
        for row in rows:
            value = row[key] if partition is None else row[key].get(partition)
            out.append("_" if value is None else repr(float(value)))
        return " ".join(out)

    labels = f'group="{group}", job="optout-exporter", instance="exporter:9107"'
    partitions = sorted({p for row in rows for p in row["lag"]})
    series = [
        {
            "series": f"kafka_consumergroup_group_max_lag_seconds{{{labels}}}",
            "values": values("max_lag_seconds"),
        },
        {
            "series": 'optout_oldest_unconfirmed_request_age_seconds{job="optout-exporter"}',
            "values": values("oldest_age"),
        },
    ]
    for status in ("OK", "WARN", "STOP", "STALL", "REWIND"):
        series.append(
            {
                "series": f'optout_consumergroup_status{{{labels}, status="{status}"}}',
                "values": " ".join(repr(float(r["status"].get(status, 0))) for r in rows),
            }
        )
    for p in partitions:
        part = f'{labels}, topic="{topic}", partition="{p}"'
        series.append({"series": f"kafka_consumergroup_group_lag{{{part}}}", "values": values("lag", p)})
        series.append(
            {"series": f"kafka_consumergroup_group_offset{{{part}}}", "values": values("offset", p)}
        )
    last = len(rows) - 1
    first_stop = next(i for i, r in enumerate(rows) if r["status"].get("STOP") == 1)
    assert all(r["status"].get("STOP") == 1 for r in rows[first_stop:]), "STOP must hold"
    expected_error = (
        [
            {
                "exp_labels": {"severity": "critical", "group": group, "status": "STOP"},
                "exp_annotations": {
                    "summary": f"Consumer group {group} is STOP",
                    "description": f"Burrow-style evaluation of {group} has been STOP for 5 minutes "
                    "(STOP: no "
                    "commits while lagging; STALL: a live member not advancing; REWIND: committed "
                    f"offset went backwards). See `optout lag --group {group} --watch`.",
                },
            }
        ]
        if last - first_stop >= 5
        else []
    )
    stopped = []
    for p in partitions:
        offsets = [r["offset"].get(p) for r in rows[max(0, last - 15) :]]
        lags = [r["lag"].get(p) or 0 for r in rows[last - 5 :]]
        if len(offsets) == 16 and len(set(offsets)) == 1 and None not in offsets and min(lags) > 0:
            stopped.append(
                {
                    "exp_labels": {"severity": "critical", "group": group, "topic": topic, "partition": p},
                    "exp_annotations": {
                        "summary": f"Consumer group {group} stopped on {topic}[{p}]",
                        "description": f"{group} has committed nothing on {topic}[{p}] for 15 minutes while "
                        f"{int(rows[last]['lag'][p])} message(s) wait. Is the service running "
                        "(`optout lag` shows STOP when no member owns the partition, STALL "
                        "when one does)?",
                    },
                }
            )
    test = {
        "rule_files": [str(PROMETHEUS / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "scraped from the e2e run",
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": f"{last}m",
                        "alertname": "OptoutConsumerGroupError",
                        "exp_alerts": expected_error,
                    },
                    {"eval_time": f"{last}m", "alertname": "OptoutConsumerStopped", "exp_alerts": stopped},
                    {
                        "eval_time": f"{first_stop}m",
                        "alertname": "OptoutConsumerGroupError",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    assert expected_error and stopped, "the scraped run is too short to make an alert fire"
    return json.dumps(test, indent=1), last  # YAML is a superset of JSON


def test_stopped_connector_shows_in_metrics_lag_and_alerts_then_recovers(base_settings, tmp_path):
    cfg = isolated_settings(base_settings)
    group = cfg.group(f"connector.{DEST}")
    topic = cfg.suppress_topic(DEST)
    services = ServiceProcesses(cfg, tmp_path, OPTOUT_LOG_LEVEL="info")
    standins = services.start("standins")
    intake, confirmer = services.start("intake"), services.start("confirmer")
    connector = services.start("connector", DEST)
    server = HealthServer(0, host="127.0.0.1")
    specs = [GroupSpec(group, (topic,)), GroupSpec(cfg.group("intake"), (cfg.requests_topic,))]
    scraper = Scraper(server.port, group)

    def run_exporter(s: Settings, stop: threading.Event) -> None:
        exporter.run(s, stop, interval=2.0, specs=specs)

    try:
        for proc in (intake, confirmer, connector):
            services.wait_ready(proc)
        with running(run_exporter, cfg, "exporter"), Load(cfg) as load:
            # 1. Everything flows: the connector keeps up.
            wait_until(
                lambda: (
                    Scraper.status(scraper.scrape()) == "OK"
                    and sum(scraper.rows[-1]["lag"].values()) < 20
                    and load.sent > 20
                ),
                timeout=90,
                interval=2,
                message="connector OK under load",
            )
            # `optout lag` samples on its own: on a busy machine one sample may catch the lag
            # rising for a moment (WARN); it reports OK once the connector keeps up again.
            wait_until(
                lambda: optout_lag(cfg, group)["status"] == "OK",
                timeout=60,
                interval=1,
                message="optout lag OK under load",
            )
            scraper.rows.clear()
            for _ in range(3):
                scraper.scrape()
                time.sleep(2)
            age_running = scraper.rows[-1]["oldest_age"]

            # 2. The connector stops; requests keep coming.
            assert services.stop(connector) == 0
            for _ in range(SCRAPES_AFTER_STOP):
                time.sleep(2)
                scraper.scrape()
            cli = optout_lag(cfg, group)
        rows = scraper.rows
        after = rows[3:]
        lag_total = [sum(r["lag"].values()) for r in after]
        assert lag_total[-1] > lag_total[0] + 20, lag_total
        assert after[-1]["max_lag_seconds"] > after[2]["max_lag_seconds"] + 10
        assert Scraper.status(rows[0]) == "OK" and Scraper.status(after[-1]) == "STOP"
        assert after[-1]["oldest_age"] > age_running + 10
        assert cli["status"] == "STOP" and cli["burrow_status"] == "ERR" and cli["members"] == 0
        assert cli["total_lag"] > 0 and cli["max_lag_seconds"] > 10

        if PROMTOOL is not None:
            text, _ = promtool_test_from(rows, group, topic)
            (tmp_path / "scraped_test.yml").write_text(text)
            result = subprocess.run(
                [PROMTOOL, "test", "rules", "scraped_test.yml"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stdout + result.stderr

        # 3. Restarted, with the load stopped: everything drains back to OK.
        connector = services.start("connector", DEST)
        services.wait_ready(connector)
        with running(run_exporter, cfg, "exporter"):
            wait_until(
                lambda: (
                    Scraper.status(scraper.scrape()) == "OK"
                    and sum(scraper.rows[-1]["lag"].values()) == 0
                    and scraper.rows[-1]["pending"] == 0
                    and scraper.rows[-1]["oldest_age"] == 0
                ),
                timeout=120,
                interval=2,
                message="back to OK, nothing pending",
            )
        back = optout_lag(cfg, group)
        assert back["status"] == "OK" and back["total_lag"] == 0
    finally:
        server.close()
        codes = services.stop_all()
    assert set(codes.values()) <= {0}, codes
    assert standins.popen.returncode == 0
