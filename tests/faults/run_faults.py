"""Fault-injection run: thousands of opt-outs through the whole pipeline (separate
processes, real broker and database) while processes are SIGKILLed, the broker restarts
and, in the full run, is frozen for 75 s (SIGSTOP, then SIGCONT), PostgreSQL goes away and
consumer groups rebalance. Then every figure is verified from the database and by reading
every output topic from the beginning.

    python -m tests.faults.run_faults            # full: 20,000 opt-outs (make test-faults)
    python -m tests.faults.run_faults --short    # the short form run by make test

On a replicated cluster (OPTOUT_DEVSTACK_BROKERS=3, ``make test-faults BROKERS=3``) the run
adds the cluster's faults (``tests/faults/cluster_faults.py``): kill -9 of the node leading
the busiest partitions and of the active controller, a node frozen with SIGSTOP for 30 s,
and a rolling restart of all three; topics then have 3 replicas, 2 of them in sync for
every write.

Seeded and repeatable (--seed): the same requests and the same fault schedule.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import ConfigResource
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from services.common.errors import RetriableError
from services.common.kafka import create_topics
from services.common.renewable_producer import RENEWED
from services.common.settings import Settings
from services.devstack import StackInfo, ensure_up, kafka_broker, kafka_cluster, postgres_server
from services.devstack import config as devstack_config
from services.devstack.config import Paths
from services.devstack.kafka_cluster import Cluster
from services.domain.planning import applicable_destinations, command_id
from services.observability import replication
from services.publisher.publish import Prepared, RequestPublisher
from tests.faults.cluster_faults import ClusterFaults
from tests.faults.environment import (
    CONNECTORS,
    create_database,
    drop_database,
    drop_topics,
    pipeline_env,
    settings_for,
    start_pipeline,
)
from tests.faults.fleet import Fleet, Instance
from tests.support.pipeline import Record, read_topic

# The full run's broker freeze (SIGSTOP, then SIGCONT): longer than the consumers' sessions, so
# they lose their partitions, and than two delivery timeouts (message.timeout.ms 30 s) with a
# retry's backoff, so a service whose batch was in flight when the broker stopped replaces its
# producer (RenewableProducer; counted from the logs, not required: a frozen broker serves no
# fetch, so a batch is in flight only if the freeze lands in the few ms it waits for its acks).
BROKER_FREEZE_SECONDS = 75.0

SCOPE_MIX = [
    ["ALL"],
    ["EMAIL_MARKETING"],
    ["POSTAL_MARKETING"],
    ["THIRD_PARTY_SHARING"],
    ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"],
    ["ALL"],
]
JURISDICTIONS = [None, "US", "US-CA", "EU", "DE", "GB"]


@dataclass(frozen=True)
class FaultPlan:
    events: int = 20_000
    rate_per_second: float = 250.0
    seed: int = 1129
    intake_instances: int = 3
    confirmer_instances: int = 2
    intake_kills: int = 5
    confirmer_kills: int = 2
    connector_kills: int = 2
    broker_restart: bool = True
    # The single broker stopped with SIGSTOP this long, then SIGCONT (0: not at all).
    broker_freeze_seconds: float = BROKER_FREEZE_SECONDS
    database_outage_seconds: float = 15.0
    rebalance: bool = True
    drain_timeout_seconds: float = 600.0
    # Behaviour of the email provider stand-in: share of calls failing with a 503, and
    # share of requests whose address it permanently refuses.
    standin_failure_rate: float = 0.0
    rejected_share: float = 0.0
    # On a replicated cluster, in this order, one after another (each waits until every
    # partition is fully replicated again): "leader" (kill -9 the node leading the busiest
    # partitions, start it again after leader_down_seconds), "leader-left-down" (the same,
    # never started again), "controller" (kill -9 the active controller), "freeze"
    # (SIGSTOP a node for freeze_seconds, then SIGCONT), "rolling" (restart every node).
    cluster_faults: tuple[str, ...] = ()
    cluster_faults_at: float = 0.1  # share of the publishing span before the first one
    leader_down_seconds: float = 10.0
    freeze_seconds: float = 30.0
    verify_settle_seconds: float = 3.0  # reading output topics: quiet time after the end

    @classmethod
    def cluster(cls) -> FaultPlan:
        """The full run on three Kafka nodes: the default faults (but the single broker's
        restart, replaced by the rolling restart) plus every cluster fault, over a longer
        span so that they all happen under load."""
        return cls(
            events=30_000,
            rate_per_second=150.0,
            broker_restart=False,
            broker_freeze_seconds=0.0,
            cluster_faults=("leader", "controller", "freeze", "rolling"),
            drain_timeout_seconds=900.0,
        )

    @classmethod
    def cluster_short(cls) -> FaultPlan:
        """The short cluster form run by make test: one node frozen with SIGSTOP for 5 s
        (a long GC pause, shorter than the broker session timeout: nothing is fenced,
        whatever needs it waits), then kill -9 of the node leading the busiest partitions,
        left down (fenced after the 9 s session timeout; its partitions get new leaders and
        the cluster carries on with two nodes, still meeting min.insync.replicas 2)."""
        return cls(
            events=1_000,
            rate_per_second=100.0,
            intake_instances=1,
            confirmer_instances=1,
            intake_kills=0,
            confirmer_kills=0,
            connector_kills=0,
            broker_restart=False,
            broker_freeze_seconds=0.0,
            database_outage_seconds=0.0,
            rebalance=False,
            cluster_faults=("freeze", "leader-left-down"),
            cluster_faults_at=0.05,
            freeze_seconds=5.0,
            drain_timeout_seconds=180.0,
            verify_settle_seconds=0.5,
        )

    @classmethod
    def short(cls) -> FaultPlan:
        return cls(
            events=2_000,
            rate_per_second=80.0,
            intake_kills=2,
            confirmer_kills=1,
            connector_kills=1,
            broker_freeze_seconds=0.0,
            database_outage_seconds=6.0,
            drain_timeout_seconds=300.0,
        )

    @classmethod
    def calm(cls, events: int = 1_000) -> FaultPlan:
        """No faults at all: duplicates must then be zero."""
        return cls(
            events=events,
            rate_per_second=200.0,
            intake_instances=1,
            confirmer_instances=1,
            intake_kills=0,
            confirmer_kills=0,
            connector_kills=0,
            broker_restart=False,
            broker_freeze_seconds=0.0,
            database_outage_seconds=0.0,
            rebalance=False,
            drain_timeout_seconds=180.0,
        )


@dataclass
class FaultReport:
    plan: FaultPlan
    faults: Counter[str] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        rows = [("fault injected", "count"), *sorted(self.faults.items())]
        rows += [("", ""), ("figure", "value")] + [(k, str(v)) for k, v in self.figures.items()]
        width = max(len(r[0]) for r in rows)
        lines = [f"{a:<{width}}  {b}" for a, b in rows]
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL: " + "; ".join(self.problems)))
        return "\n".join(lines)


def _requests(plan: FaultPlan, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    now = datetime.now(UTC)
    for i in range(plan.events):
        scopes = rng.choice(SCOPE_MIX)
        fields: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "email": f"person{i}.{rng.randrange(10**6)}@example.com",
            "scopes": scopes,
            "source": rng.choice(["WEB_FORM", "API", "CALL_CENTER"]),
            "jurisdiction": rng.choice(JURISDICTIONS),
            "requested_at": now - timedelta(seconds=rng.randrange(3600)),
        }
        if rng.random() < 0.3 or "POSTAL_MARKETING" in scopes:
            fields["postal_address"] = {
                "name": f"Person {i}",
                "lines": [f"{i} Main St"],
                "city": "Springfield",
                "postal_code": f"{10000 + i}",
                "country": "US",
            }
        if rng.random() < 0.3:
            fields["phone"] = f"+1415555{i % 10000:04d}"
        out.append(fields)
    return out


CLUSTER_FAULTS = ("leader", "leader-left-down", "controller", "freeze", "rolling")


class Run:
    def __init__(
        self, plan: FaultPlan, work_dir: Path, stack: StackInfo | None = None, cluster: Cluster | None = None
    ) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.report = FaultReport(plan)
        self.stack = stack or ensure_up()
        self.paths = Paths.from_env()
        if cluster is None and self.stack.kafka_brokers >= 3:
            cluster = kafka_cluster.layout(self.paths, self.stack.kafka_brokers)
        self.cluster = cluster
        unknown = [f for f in plan.cluster_faults if f not in CLUSTER_FAULTS]
        if unknown:
            raise ValueError(f"unknown cluster faults {unknown}; known: {CLUSTER_FAULTS}")
        if plan.cluster_faults and cluster is None:
            raise SystemExit(
                "the cluster faults need the local three-node cluster: make test-faults BROKERS=3"
            )
        self.cluster_faults: ClusterFaults | None = None
        self.work_dir = work_dir
        self.db_name = f"optout_faults_{uuid.uuid4().hex[:8]}"
        self.killed: set[int] = set()
        self.died_on_their_own: list[Instance] = []
        self.restarted: set[int] = set()
        self.pending_restarts: list[threading.Timer] = []
        self.lock = threading.Lock()

    # --- set-up -------------------------------------------------------------------
    def _database(self) -> tuple[str, str]:
        return create_database(self.stack, self.db_name)

    def _env(self, app: str, admin: str, rejected: list[str]) -> dict[str, str]:
        return pipeline_env(
            self.stack,
            app,
            admin,
            self.work_dir,
            standin_failure_rate=self.plan.standin_failure_rate,
            rejected_emails=rejected,
        )

    # --- faults -------------------------------------------------------------------
    def _kill(self, fleet: Fleet, name: str, restart_after: float | None) -> None:
        with self.lock:
            alive = fleet.alive(name)
            if not alive:
                return
            victim = self.rng.choice(alive)
            self.killed.add(victim.proc.pid)
            fleet.kill9(victim)
        label = (
            f"kill -9 {name}"
            if restart_after is not None
            else f"rebalance: {name} removed (kill -9, not restarted)"
        )
        self.report.faults[label] += 1
        if restart_after is not None:
            time.sleep(restart_after)
            with self.lock:
                fleet.restart(victim)

    def _broker_restart(self) -> None:
        if not self.stack.started_here or self.stack.superuser_database_url is None:
            self.report.faults["broker restart (skipped: external broker)"] += 1
            return
        kafka_broker.stop(self.paths)
        time.sleep(3)
        kafka_broker.ensure_running(self.paths, install=False)
        self.report.faults["Kafka broker stop + restart"] += 1

    def _broker_freeze(self, seconds: float) -> None:
        pid = kafka_broker.running_pid(self.paths) if self.stack.started_here else None
        if pid is None:
            self.report.faults["broker freeze (skipped: external broker)"] += 1
            return
        sys.stderr.write(f"SIGSTOP the broker for {seconds:.0f}s\n")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.report.faults[f"Kafka broker frozen (SIGSTOP) for {seconds:.0f}s, then SIGCONT"] += 1

    def _database_outage(self, seconds: float) -> None:
        if self.stack.superuser_database_url is None:
            self.report.faults["database outage (skipped: external database)"] += 1
            return
        postgres_server.stop(self.paths)
        time.sleep(seconds)
        postgres_server.ensure_running(self.paths, install=False)
        self.report.faults[f"PostgreSQL stopped for {seconds:.0f}s"] += 1

    def _schedule(self, fleet: Fleet, span: float) -> list[tuple[float, str, Callable[[], None]]]:
        p, r = self.plan, self.rng
        restart = lambda: r.uniform(0.5, 3.0)  # noqa: E731
        at = lambda: r.uniform(0.1 * span, 0.9 * span)  # noqa: E731
        events: list[tuple[float, str, Callable[[], None]]] = []
        for _ in range(p.intake_kills):
            delay = restart()
            events.append((at(), "kill intake", lambda d=delay: self._kill(fleet, "intake", d)))
        for _ in range(p.confirmer_kills):
            delay = restart()
            events.append((at(), "kill confirmer", lambda d=delay: self._kill(fleet, "confirmer", d)))
        for _ in range(p.connector_kills):
            delay = restart()
            events.append(
                (at(), "kill connector", lambda d=delay: self._kill(fleet, "connector.email_provider", d))
            )
        if p.broker_restart:
            events.append((r.uniform(0.3 * span, 0.6 * span), "broker", self._broker_restart))
        if p.broker_freeze_seconds:  # the schedule runs in turn: later faults wait for the thaw
            events.append(
                (
                    r.uniform(0.15 * span, 0.25 * span),
                    "freeze",
                    lambda: self._broker_freeze(p.broker_freeze_seconds),
                )
            )
        if p.database_outage_seconds:
            events.append(
                (
                    r.uniform(0.5 * span, 0.8 * span),
                    "database",
                    lambda: self._database_outage(p.database_outage_seconds),
                )
            )
        if p.rebalance:
            events.append(
                (0.4 * span, "rebalance: remove an intake", lambda: self._kill(fleet, "intake", None))
            )
            events.append((0.45 * span, "rebalance: add a confirmer", lambda: self._add(fleet)))
        return sorted(events, key=lambda e: e[0])

    def _add(self, fleet: Fleet) -> None:
        with self.lock:
            fleet.start("confirmer", "confirmer")
        self.report.faults["rebalance: confirmer added"] += 1

    # --- the run ------------------------------------------------------------------
    def execute(self) -> FaultReport:
        plan = self.plan
        setting_up = time.monotonic()
        app, admin = self._database()
        publisher_rng = random.Random(plan.seed + 1)
        requests = _requests(plan, self.rng)
        rejected = sorted(
            r["email"]
            for r in requests
            if publisher_rng.random() < plan.rejected_share
            and any(s in ("ALL", "EMAIL_MARKETING") for s in r["scopes"])
        )
        env = self._env(app, admin, rejected)
        cfg = settings_for(env)
        create_topics(cfg, cfg.all_topics())
        if self.cluster is not None:
            self.cluster_faults = ClusterFaults(
                self.paths, self.cluster, cfg.all_topics(), random.Random(plan.seed + 2), self.report.faults
            )
        fleet = Fleet(env, self.work_dir)
        start_pipeline(fleet, plan.intake_instances, plan.confirmer_instances)
        fleet.wait_consuming()  # faults hit a running pipeline, however busy the machine

        publisher = RequestPublisher(cfg)
        prepared = [publisher.prepare(f) for f in requests]
        expected = {
            p.record["event_id"]: [d.id for d in applicable_destinations(p.request, cfg.destinations)]
            for p in prepared
        }
        refused = {p.record["event_id"] for p in prepared if p.record["email"] in set(rejected)}
        span = plan.events / plan.rate_per_second
        schedule = self._schedule(fleet, span)
        started = time.monotonic()
        sys.stderr.write(f"set up in {started - setting_up:.1f}s; publishing\n")
        faults = threading.Thread(target=self._run_schedule, args=(schedule, started), daemon=True)
        faults.start()
        kafka_faults = threading.Thread(
            target=self._run_cluster_faults, args=(started + plan.cluster_faults_at * span,), daemon=True
        )
        kafka_faults.start()
        supervising = threading.Event()
        supervisor = threading.Thread(target=self._supervise, args=(fleet, supervising), daemon=True)
        supervisor.start()
        try:
            self._publish(publisher, prepared, started)
            faults.join()
            kafka_faults.join()
            self._drain(cfg, len(prepared), started)
        finally:
            supervising.set()
            supervisor.join()
            for timer in self.pending_restarts:
                timer.cancel()
            with self.lock:
                fleet.stop_all()
            # Whatever did not stop cleanly on SIGTERM (exit 0) is a failure.
            self.died_on_their_own = [
                i
                for i in fleet.instances
                if i.proc.returncode not in (0, -15)
                and i.proc.pid not in self.killed
                and i.proc.pid not in self.restarted
            ]
        self.report.figures["elapsed seconds"] = round(time.monotonic() - started, 1)
        self.report.figures["exits restarted by the supervisor"] = len(self.restarted)
        verifying = time.monotonic()
        self._verify(cfg, expected, refused, fleet)
        sys.stderr.write(f"verified in {time.monotonic() - verifying:.1f}s\n")
        if self.report.ok:
            self._drop_database()
            self.report.figures["topics deleted"] = len(drop_topics(cfg))
        else:
            self.report.figures["database kept for inspection"] = self.db_name
            self.report.figures["topics kept for inspection"] = f"{cfg.topic_prefix}*"
        return self.report

    def _supervise(self, fleet: Fleet, done: threading.Event) -> None:
        """Act like an orchestrator: a service that exits by itself (for example because
        PostgreSQL was down when it started, which it reports and exits on) is started
        again two seconds later."""
        while not done.wait(1.0):
            with self.lock:
                for instance in list(fleet.instances):
                    pid = instance.proc.pid
                    if (
                        instance.proc.poll() is not None
                        and pid not in self.killed
                        and pid not in self.restarted
                    ):
                        self.restarted.add(pid)
                        timer = threading.Timer(2.0, self._restart_later, (fleet, instance))
                        self.pending_restarts.append(timer)
                        timer.start()

    def _run_cluster_faults(self, start_at: float) -> None:
        """The cluster's faults, one after another, from ``start_at`` (a monotonic time)."""
        chaos, plan = self.cluster_faults, self.plan
        if chaos is None or not plan.cluster_faults:
            return
        time.sleep(max(0.0, start_at - time.monotonic()))
        try:
            for name in plan.cluster_faults:
                if name == "leader":
                    chaos.kill_busiest_leader(plan.leader_down_seconds)
                elif name == "leader-left-down":
                    chaos.kill_busiest_leader(0.0, restart=False)
                elif name == "controller":
                    chaos.kill_controller(plan.leader_down_seconds)
                elif name == "freeze":
                    chaos.freeze(plan.freeze_seconds)
                elif name == "rolling":
                    chaos.rolling_restart()
        except Exception as exc:  # reported as a failure of the run, with its reason
            self.report.problems.append(f"cluster fault failed: {type(exc).__name__}: {exc}")

    def _restart_later(self, fleet: Fleet, instance: Instance) -> None:
        with self.lock:
            fleet.restart(instance)

    def _run_schedule(self, schedule: list[tuple[float, str, Callable[[], None]]], started: float) -> None:
        for at, _name, action in schedule:
            time.sleep(max(0.0, started + at - time.monotonic()))
            action()

    def _publish(self, publisher: RequestPublisher, prepared: list[Prepared], started: float) -> None:
        chunk = max(1, int(self.plan.rate_per_second / 4))
        for i in range(0, len(prepared), chunk):
            due = started + i / self.plan.rate_per_second
            time.sleep(max(0.0, due - time.monotonic()))
            for attempt in Retrying(
                retry=retry_if_exception_type(RetriableError),
                stop=stop_after_delay(120),
                wait=wait_fixed(1),
                reraise=True,
            ):
                with attempt:
                    publisher.publish(prepared[i : i + chunk])
            if (i // chunk) % 40 == 0:
                sys.stderr.write(f"published {i + chunk}/{len(prepared)}\n")

    def _drain(self, cfg: Settings, total: int, started: float) -> None:
        deadline = time.monotonic() + self.plan.drain_timeout_seconds
        last = -1
        while time.monotonic() < deadline:
            confirmed = _scalar(cfg.dsn(), "SELECT count(*) FROM requests WHERE state <> 'PENDING'")
            if confirmed != last:
                sys.stderr.write(f"confirmed {confirmed}/{total} after {time.monotonic() - started:.0f}s\n")
                last = confirmed
            if confirmed >= total:
                return
            time.sleep(2)

    def _verify(self, cfg: Settings, expected: dict[str, list[str]], refused: set[str], fleet: Fleet) -> None:
        rep, fig = self.report, self.report.figures
        ids = list(expected)
        fig["opt-outs published"] = len(ids)
        fig["requests recorded (distinct)"] = _scalar(
            cfg.dsn(), "SELECT count(*) FROM requests WHERE event_id = ANY(%s)", (ids,)
        )
        want_commands = {command_id(e, d) for e, dests in expected.items() for d in dests}
        outputs = self._read_outputs(cfg)
        delivered: Counter[str] = Counter()
        for dest in CONNECTORS:
            for rec in outputs[cfg.suppress_topic(dest)]:
                body = rec.decoded()
                assert body["destination"] == dest
                delivered[body["command_id"]] += 1
        refused_commands = {command_id(e, "email_provider") for e in refused}
        fig["commands expected"] = len(want_commands)
        fig["commands delivered (distinct)"] = len(want_commands & set(delivered))
        fig["unexpected commands"] = len(set(delivered) - want_commands)
        fig["duplicate command messages"] = sum(delivered.values()) - len(delivered)
        fig["destinations applied"] = _scalar(
            cfg.dsn(),
            "SELECT count(*) FROM destination_status WHERE status IN "
            "('APPLIED', 'ALREADY_SUPPRESSED') AND event_id = ANY(%s)",
            (ids,),
        )
        fig["destinations rejected"] = _scalar(
            cfg.dsn(),
            "SELECT count(*) FROM destination_status WHERE status = 'REJECTED' AND event_id = ANY(%s)",
            (ids,),
        )
        fig["requests needing attention"] = _scalar(
            cfg.dsn(),
            "SELECT count(*) FROM requests WHERE state = 'NEEDS_ATTENTION' AND event_id = ANY(%s)",
            (ids,),
        )
        confirmations: Counter[str] = Counter()
        wrong_destinations = 0
        for rec in outputs[cfg.confirmations_topic]:
            body = rec.decoded()
            confirmations[body["request_id"]] += 1
            named = sorted(d["destination"] for d in body["destinations"])
            if named != sorted(expected.get(body["request_id"], [])):
                wrong_destinations += 1
        should_confirm = set(ids) - refused
        fig["requests to confirm"] = len(should_confirm)
        fig["requests confirmed (distinct)"] = len(should_confirm & set(confirmations))
        fig["confirmations for refused requests"] = len(refused & set(confirmations))
        fig["confirmations naming wrong destinations"] = wrong_destinations
        fig["duplicate confirmations"] = sum(confirmations.values()) - len(confirmations)
        dlq = sum(len(outputs[t]) for t in cfg.all_topics() if "dlq" in t)
        fig["dead letters"] = dlq
        unexpected = self.died_on_their_own
        fig["processes that died on their own or failed to stop"] = len(unexpected)
        renewed = sum(RENEWED in line for line in fleet.log_lines())
        fig["producers replaced (RenewableProducer, logged)"] = renewed

        checks = [
            (fig["requests recorded (distinct)"] == len(ids), "not every event was recorded"),
            (
                fig["commands delivered (distinct)"] == len(want_commands),
                "some commands never reached their destination",
            ),
            (fig["unexpected commands"] == 0, "commands for destinations a request did not touch"),
            (
                fig["destinations applied"] == len(want_commands - refused_commands),
                "some destinations did not apply their command",
            ),
            (
                fig["destinations rejected"] == len(refused_commands),
                "rejections do not match the refused addresses",
            ),
            (
                fig["requests needing attention"] == len(refused),
                "refused requests are not marked as needing attention",
            ),
            (
                fig["requests confirmed (distinct)"] == len(should_confirm),
                "some requests were never confirmed",
            ),
            (fig["confirmations for refused requests"] == 0, "a refused request was confirmed"),
            (wrong_destinations == 0, "a confirmation named the wrong destinations"),
            (dlq == 0, f"{dlq} good messages were dead-lettered"),
            (not unexpected, "processes died: " + ", ".join(f"{i.name} (log {i.log})" for i in unexpected)),
            (
                bool(self.report.faults)
                or (fig["duplicate command messages"] == 0 and fig["duplicate confirmations"] == 0),
                "duplicates in a run without faults",
            ),
        ]
        checks += self._verify_cluster(cfg)
        rep.problems.extend(message for passed, message in checks if not passed)

    def _read_outputs(self, cfg: Settings) -> dict[str, list[Record]]:
        """Every command topic, the confirmations and every DLQ, read from the beginning, all
        at once (each reader waits for the topic's end and then a quiet moment)."""
        settle = self.plan.verify_settle_seconds
        wanted = {cfg.suppress_topic(d): settle for d in CONNECTORS}
        wanted[cfg.confirmations_topic] = settle
        wanted.update({t: min(1.0, settle) for t in cfg.all_topics() if "dlq" in t})
        with ThreadPoolExecutor(len(wanted), thread_name_prefix="verify") as pool:
            futures = {t: pool.submit(read_topic, cfg, t, None, 300, quiet) for t, quiet in wanted.items()}
            return {t: f.result() for t, f in futures.items()}

    def _verify_cluster(self, cfg: Settings) -> list[tuple[bool, str]]:
        """On the cluster: the run's topics have the replicas and min ISR asked for, the
        recoveries' durations, and the nodes alive at the end."""
        chaos = self.cluster_faults
        if self.cluster is None or chaos is None:
            return []
        fig = self.report.figures
        admin = self.cluster.admin()
        topics = admin.list_topics(timeout=10).topics
        replicas = sorted({len(p.replicas) for t in cfg.all_topics() for p in topics[t].partitions.values()})
        described = admin.describe_configs([ConfigResource("TOPIC", t) for t in cfg.all_topics()])
        min_isr = sorted({f.result(30)["min.insync.replicas"].value for f in described.values()})
        fig["topic replicas / min.insync.replicas"] = f"{replicas} / {min_isr}"
        for label, seconds in chaos.recoveries:
            fig[label] = round(seconds, 1)
        fig["Kafka nodes alive at the end"] = len(kafka_cluster.pids(self.cluster))
        health = replication.from_metadata(
            admin.list_topics(timeout=10), cfg.all_topics(), cfg.topic_min_insync_replicas or 1
        )
        under = sum(h.under_replicated for h in health.values())
        unwritable = sum(h.unwritable for h in health.values())
        fig["partitions under-replicated / refusing writes at the end"] = f"{under} / {unwritable}"
        return [
            (
                replicas == [cfg.topic_replication_factor],
                f"topics have {replicas} replicas, not {cfg.topic_replication_factor}",
            ),
            (
                cfg.topic_min_insync_replicas is None or min_isr == [str(cfg.topic_min_insync_replicas)],
                f"topics have min.insync.replicas {min_isr}, not {cfg.topic_min_insync_replicas}",
            ),
        ]

    def _drop_database(self) -> None:
        drop_database(self.stack, self.db_name)


def _scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> int:
    for attempt in Retrying(
        stop=stop_after_delay(60),
        wait=wait_fixed(1),
        reraise=True,
        retry=retry_if_exception_type(psycopg.OperationalError),
    ):
        with attempt, psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute(query.encode(), params).fetchone()
            return int(row[0]) if row else 0
    return 0


def run(
    plan: FaultPlan,
    output: Path | None = None,
    stack: StackInfo | None = None,
    cluster: Cluster | None = None,
) -> FaultReport:
    """Run ``plan`` on ``stack`` (default: ``ensure_up()``), with the cluster's faults on
    ``cluster`` (default: the stack's own when it runs three nodes); services' logs and the
    mail-house files stay in ``output``."""
    folder = output or Path("test-output") / f"faults-{plan.seed}-{int(time.time())}"
    folder.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"service logs: {folder}\n")
    return Run(plan, folder, stack, cluster).execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the short form run by make test")
    parser.add_argument("--calm", action="store_true", help="no faults (duplicates must be 0)")
    parser.add_argument("--events", type=int, help="override the number of opt-outs")
    parser.add_argument("--seed", type=int, help="override the seed")
    args = parser.parse_args(argv)
    on_cluster = devstack_config.broker_count() >= 3
    if args.calm:
        plan = FaultPlan.calm()
    elif on_cluster:
        plan = FaultPlan.cluster_short() if args.short else FaultPlan.cluster()
    else:
        plan = FaultPlan.short() if args.short else FaultPlan()
    if args.events:
        plan = replace(plan, events=args.events)
    if args.seed is not None:
        plan = replace(plan, seed=args.seed)
    sys.stderr.write(f"fault plan: {plan}\n")
    report = run(plan)
    sys.stdout.write(report.table() + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
