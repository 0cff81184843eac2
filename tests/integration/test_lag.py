"""Consumer lag against the real broker: ``optout lag`` (Burrow-style statuses) and a running
intake's /metrics, /healthz and /readyz (issue: observability)."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from services.common.settings import Settings
from services.intake.service import run as run_intake
from services.observability.health import HEALTH, serve_health
from services.publisher.publish import RequestPublisher
from tests.support.pipeline import isolated_settings, running, wait_until

pytestmark = pytest.mark.integration


# --- helpers -----------------------------------------------------------------------------------
def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def series(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> dict[str, float]:
    """``partition -> value`` of ``name`` samples matching ``labels``."""
    found = {}
    for (metric, label_items), value in metrics.items():
        as_dict = dict(label_items)
        if metric == name and all(as_dict.get(k) == v for k, v in labels.items()):
            found[as_dict.get("partition", "")] = value
    return found


class LagWatch:
    """``optout lag --watch 1 --json`` in a subprocess; each refresh lands in a queue."""

    def __init__(self, cfg: Settings, group: str, window: int) -> None:
        env = {
            **os.environ,
            "OPTOUT_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
            "OPTOUT_TOPIC_PREFIX": cfg.topic_prefix,
            "OPTOUT_LOG_FORMAT": "json",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "lag",
                "--group",
                group,
                "--json",
                "--watch",
                "1",
                "--window",
                str(window),
                "--timeout",  # generous: a busy test machine, not a missing broker
                "30",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line)["groups"][0])

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                group = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, self._stderr()
                continue
            self.seen.append(group)
            if predicate(group):
                return group
        raise AssertionError(f"no refresh of `optout lag` showed {what}; last: {self.seen[-3:]}")

    def _stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _partition0(group: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in group["partitions"] if p["partition"] == 0)


# --- optout lag ---------------------------------------------------------------------------------
def test_optout_lag_turns_ok_warn_stop_rewind_and_back_to_ok(base_settings):
    cfg = isolated_settings(base_settings)
    topic = cfg.suppress_topic("email_provider")
    group = cfg.group("connector.email_provider")  # a pipeline group: its topic is known
    producer = Producer(cfg.kafka_config())

    def produce(n: int) -> None:
        for _ in range(n):
            producer.produce(topic, value=b"x", partition=0)
        producer.flush(10)

    def commit(consumer: Consumer, offset: int) -> None:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)

    member = Consumer(
        {
            **cfg.kafka_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    member.subscribe([topic])
    wait_until(
        lambda: (member.poll(0.2), bool(member.assignment()))[1], timeout=30, message="partitions assigned"
    )
    produce(20)
    commit(member, 20)
    watch = LagWatch(cfg, group, window=4)
    try:
        ok = watch.wait_for(
            lambda g: g["status"] == "OK" and _partition0(g)["committed"] == 20, 30, "OK with lag 0"
        )
        assert _partition0(ok)["lag"] == 0 and _partition0(ok)["lag_seconds"] == 0
        assert ok["members"] == 1 and _partition0(ok)["owner"]

        # A live consumer slower than its input: offsets advance, lag never decreases -> WARN.
        offset = 20
        deadline = time.monotonic() + 25
        warn = None
        while time.monotonic() < deadline and warn is None:
            produce(10)
            offset += 3
            commit(member, offset)
            member.poll(0.05)
            time.sleep(1)
            warn = next((g for g in list(watch.seen) if g["status"] == "WARN"), None)
            while not watch.lines.empty():
                g = watch.lines.get()
                watch.seen.append(g)
                warn = warn or (g if g["status"] == "WARN" else None)
        assert warn is not None, f"never WARN: {watch.seen[-4:]}"
        assert _partition0(warn)["lag"] > 0 and warn["burrow_status"] == "WARN"

        # The consumer stops (leaves the group); messages keep arriving -> STOP, lag rising.
        member.close()
        stop = watch.wait_for(lambda g: g["status"] == "STOP", 30, "STOP")
        assert stop["members"] == 0 and stop["burrow_status"] == "ERR"
        first_lag, first_age = _partition0(stop)["lag"], _partition0(stop)["lag_seconds"]
        produce(15)
        later = watch.wait_for(
            lambda g: (
                _partition0(g)["lag"] >= first_lag + 15 and _partition0(g)["lag_seconds"] > first_age + 1
            ),
            30,
            "lag in messages and seconds rising",
        )
        assert later["status"] == "STOP"

        # Restarted: catches up to the end -> OK.
        end = _partition0(later)["end"]
        member = Consumer(
            {
                **cfg.kafka_config(),
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        member.subscribe([topic])
        wait_until(lambda: (member.poll(0.2), bool(member.assignment()))[1], timeout=30, message="reassigned")
        commit(member, end)
        back = watch.wait_for(lambda g: g["status"] == "OK" and _partition0(g)["lag"] == 0, 30, "OK again")
        assert back["max_lag_seconds"] == 0

        # Someone resets the group's offset backwards -> REWIND.
        commit(member, 5)
        rewind = watch.wait_for(lambda g: g["status"] == "REWIND", 30, "REWIND")
        assert _partition0(rewind)["committed"] == 5 and _partition0(rewind)["lag"] == end - 5
    finally:
        watch.close()
        member.close()


def test_optout_lag_one_shot_table_and_json_for_the_pipeline_groups(base_settings):
    cfg = isolated_settings(base_settings)
    topic = cfg.requests_topic
    producer = Producer(cfg.kafka_config())
    for _ in range(7):
        producer.produce(topic, value=b"x", partition=1)
    producer.flush(10)
    env = {**os.environ, "OPTOUT_TOPIC_PREFIX": cfg.topic_prefix, "OPTOUT_LOG_FORMAT": "json"}
    base = [
        sys.executable,
        "-m",
        "services.cli.main",
        "lag",
        "--bootstrap",
        cfg.kafka_bootstrap,
        "--samples",
        "2",
        "--interval",
        "0.5",
    ]
    answered = [*base, "--timeout", "30"]  # generous: a busy test machine, not a missing broker
    done = subprocess.run([*answered, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    groups = {g["group"]: g for g in json.loads(done.stdout)["groups"]}
    assert set(groups) == {
        cfg.group(n)
        for n in (
            "intake",
            "confirmer",
            "connector.email_provider",
            "connector.mail_house",
            "connector.third_party_sharing",
            "connector.sms_sender",
        )
    }
    intake = groups[cfg.group("intake")]
    # Nothing committed yet, nobody consuming, messages waiting: lag from the low watermark, STOP.
    p1 = next(p for p in intake["partitions"] if p["partition"] == 1)
    assert (p1["committed"], p1["end"], p1["lag"]) == (None, 7, 7)
    assert p1["lag_seconds"] is not None and p1["lag_seconds"] >= 0
    assert intake["status"] == "STOP" and groups[cfg.group("confirmer")]["status"] == "OK"

    table = subprocess.run(answered, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert f"group {cfg.group('intake')}: STOP" in table.stdout
    assert "LAG_SECONDS" in table.stdout
    # GROUP TOPIC PARTITION COMMITTED END LAG LAG_SECONDS STATUS OWNER
    assert re.search(rf"{re.escape(topic)}\s+1\s+-\s+7\s+7\s+[\d.]+\s+STOP\s+-", table.stdout)

    # No broker there: one line naming the address after the first check's --timeout, exit 3.
    unreachable = subprocess.run(
        [*base[:-4], "--bootstrap", "127.0.0.1:1", "--samples", "1", "--timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unreachable.returncode == 3, unreachable.stderr
    assert "Traceback" not in unreachable.stderr and unreachable.stdout == ""
    assert unreachable.stderr.strip().splitlines() == [
        "optout: no Kafka broker answered at 127.0.0.1:1 within 1 s (transient; try again)"
    ]


# --- a running intake's own /metrics, /healthz, /readyz -------------------------------------
@contextmanager
def health_endpoint(cfg: Settings) -> Iterator[int]:
    server = serve_health(cfg, needs_db=True, port=0)
    assert server is not None
    try:
        yield server.port
    finally:
        server.close()
        HEALTH.remove_check("kafka")
        HEALTH.remove_check("database")


def _get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"evt-{uuid.uuid4()}",
        "email": f"lag{i}@example.com",
        "scopes": ["EMAIL_MARKETING"],
        "source": "API",
    }


def test_intake_metrics_show_its_partition_lag_and_health(base_settings, database):
    cfg = isolated_settings(base_settings, kafka_extra={"statistics.interval.ms": "1000"})
    group = cfg.group("intake")
    publisher = RequestPublisher(cfg)
    publisher.publish([publisher.prepare(_event(i)) for i in range(30)])
    name = sql.Identifier(database["name"])
    with (
        health_endpoint(cfg) as port,
        running(run_intake, cfg, "intake"),
        psycopg.connect(database["superuser"].replace(database["name"], "postgres"), autocommit=True) as su,
    ):

        def caught_up() -> bool:
            m = scrape(port)
            lags = series(m, "kafka_consumergroup_group_lag", group=group)
            ages = series(m, "kafka_consumergroup_group_lag_seconds", group=group)
            return len(lags) == 3 and set(lags.values()) == {0.0} and set(ages) == set(lags)

        wait_until(caught_up, timeout=60, message="lag 0 for the 3 partitions in /metrics")
        metrics = scrape(port)
        assert series(metrics, "optout_assigned_partitions", service="intake") == {"": 3.0}
        assert series(metrics, "kafka_consumergroup_group_offset", group=group)
        assert _get(port, "/healthz").status_code == 200
        wait_until(lambda: _get(port, "/readyz").status_code == 200, timeout=30, message="ready")

        # The database goes away: intake keeps polling (live) but cannot commit -> lag rises.
        su.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        su.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database["name"],),
        )
        try:
            publisher.publish([publisher.prepare(_event(100 + i)) for i in range(12)])

            def lagging() -> dict[str, float]:
                m = scrape(port)
                lags = series(m, "kafka_consumergroup_group_lag", group=group)
                ages = series(m, "kafka_consumergroup_group_lag_seconds", group=group)
                return {p: ages.get(p, 0.0) for p, v in lags.items() if v > 0 and ages.get(p, 0) > 0}

            wait_until(lambda: bool(lagging()), timeout=60, message="lag > 0 in messages and seconds")

            # Each partition's lag comes with the statistics of the fetch that saw its new
            # high watermark: the partitions catch up with each other within an interval.
            def total() -> float:
                return sum(series(scrape(port), "kafka_consumergroup_group_lag", group=group).values())

            wait_until(lambda: total() == 12, timeout=30, message="the 12 unconsumed messages as lag")
            assert total() == 12
            first = lagging()
            wait_until(
                lambda: any(lagging().get(p, 0) > age + 2 for p, age in first.items()),
                timeout=30,
                message="lag seconds rising",
            )
            wait_until(
                lambda: _get(port, "/readyz").status_code == 503,
                timeout=30,
                message="not ready without the database",
            )
            body = _get(port, "/readyz").json()
            assert body["checks"]["database"]["ok"] is False and body["checks"]["kafka"]["ok"] is True
            assert _get(port, "/healthz").status_code == 200  # the loop still polls
            failed = series(
                scrape(port), "optout_messages_consumed_total", service="intake", outcome="failed"
            )
            assert sum(failed.values()) >= 12  # each failed attempt counts its batch
        finally:
            su.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))

        wait_until(caught_up, timeout=90, message="lag back to 0 after the outage")
        wait_until(lambda: _get(port, "/readyz").status_code == 200, timeout=30, message="ready again")
    # Stopped: its partitions' series are gone, the liveness check forgets the loop.
    after = scrape_after_stop(cfg)
    assert not series(after, "kafka_consumergroup_group_lag", group=group)


def scrape_after_stop(cfg: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    server = serve_health(cfg, needs_db=False, port=0)
    assert server is not None
    try:
        assert _get(server.port, "/healthz").json()["loops"] == {}
        return scrape(server.port)
    finally:
        server.close()
        HEALTH.remove_check("kafka")
