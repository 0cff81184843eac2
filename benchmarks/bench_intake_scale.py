"""Intake scaled out from 1 to 3 processes on a replicated Kafka cluster (``make bench-intake-scale``,
issue #14): does adding intake instances add throughput, and what does each one do?

    .venv/bin/python -m benchmarks.bench_intake_scale [--events 60000] [--instances 1,2,3]
        [--partitions 6]

For each instance count N, on a fresh database and fresh topics (3 replicas, min ISR 2 on
the cluster): preload ``--events`` OptOutRequested events, start N ``optout run intake``
processes in one consumer group, and time from the first request recorded to the last
request recorded and every command delivered (start-up and the group join excluded). Each
process's own count comes from its /metrics (``optout_messages_consumed_total``) and its CPU
time from /proc; the load average is printed around each run. Every figure is printed beside
the target: intake's 10,000 events/s (``bench_intake.TARGET_RATE``).

What the figures can show depends on the cores: this project's machine has 2, shared by the
three Kafka JVMs, PostgreSQL and the intake processes. Beyond what 2 cores allow, more
processes only share the same CPU; the run prints each process's CPU seconds and the load
so that the reader can tell "intake is the limit" from "the machine is the limit".
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bench_intake import TARGET_RATE
from benchmarks.common import (
    BenchEnv,
    EndOffsets,
    Progress,
    close_env,
    count_rows,
    load_average,
    note,
    open_env,
    preload,
    setup_logging,
    start_stack,
)
from services.common.kafka import make_admin
from tests.support.pipeline import free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ScaleRun:
    instances: int
    events: int
    seconds: float
    per_process: list[int]  # events each process consumed (its own metrics)
    cpu_seconds: list[float]  # each process's CPU time (user + system) over its life
    load_before: str
    load_after: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _consumed(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "optout_messages_consumed":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return int(total)


def run_instances(env: BenchEnv, events: int, commands: int, instances: int, timeout: float) -> ScaleRun:
    settings = env.settings
    ports = [free_port() for _ in range(instances)]
    base_env = {
        **os.environ,
        "OPTOUT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OPTOUT_DATABASE_URL": settings.dsn(),
        "OPTOUT_TOPIC_PREFIX": settings.topic_prefix,
        "OPTOUT_BATCH_SIZE": str(settings.batch_size),
        "OPTOUT_LOG_LEVEL": "warning",
        "OPTOUT_LOG_FORMAT": "json",
    }
    watch = EndOffsets(settings, env.suppress_topics())
    load_before = load_average()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", "intake"],
            env={**base_env, "OPTOUT_METRICS_PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    label = f"{instances} intake process{'es' if instances > 1 else ''}"
    progress = Progress(label, events)
    launched = time.monotonic()
    first: float | None = None
    per_process: list[int] = []
    cpu: list[float] = []
    try:
        while True:
            rows = count_rows(env.dsn(), "requests")
            now = time.monotonic()
            if first is None and rows > 0:
                first = now
            if rows >= events and watch.total() >= commands:
                ended = now
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{label}: an intake process exited early")
            if now - launched > timeout:
                raise RuntimeError(f"{label}: {rows}/{events} recorded within {timeout:.0f}s")
            progress.update(rows)
            time.sleep(0.05)
        per_process = [_consumed(port) for port in ports]
        cpu = [_cpu_seconds(p.pid) for p in procs]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        watch.close()
    start = first if first is not None else launched
    return ScaleRun(instances, events, ended - start, per_process, cpu, load_before, load_average())


def _replication(env: BenchEnv) -> str:
    topics = make_admin(env.settings).list_topics(timeout=10)
    topic = topics.topics[env.settings.requests_topic]
    replicas = {len(p.replicas) for p in topic.partitions.values()}
    return f"{len(topics.brokers)} broker(s), requests topic with {sorted(replicas)} replica(s)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench-intake-scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="events preloaded for each run")
    parser.add_argument("--instances", default="1,2,3", help="comma-separated process counts")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=None, help="OPTOUT_BATCH_SIZE (default: settings)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases and topics")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    args.counts = [int(n) for n in args.instances.split(",") if n.strip()]
    if args.events < 1 or not args.counts or min(args.counts) < 1:
        parser.error("--events and every --instances count must be positive")
    if max(args.counts) > args.partitions:
        parser.error("more processes than partitions would leave some without work")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    stack = start_stack()
    overrides: dict[str, Any] = {} if args.batch_size is None else {"batch_size": args.batch_size}
    runs: list[ScaleRun] = []
    shape = ""
    for count in args.counts:
        env = open_env(stack, f"scale{count}", args.partitions, **overrides)
        try:
            shape = shape or _replication(env)
            loaded = preload(env.settings, args.events, seed=args.seed)
            note(f"{count} process(es): preloaded {args.events} events in {loaded.seconds:.1f}s")
            run = run_instances(env, args.events, loaded.commands, count, args.timeout)
            note(f"{count} process(es): {run.rate:,.0f} ev/s")
            runs.append(run)
        finally:
            if not args.keep:
                close_env(env)

    one = runs[0].rate if runs else 0.0
    header = (
        f"{'processes':>9} {'events':>8} {'seconds':>8} {'events/s':>9} {'x first':>8} "
        f"{'per process (events/s each)':<30} {'CPU s each':<18} {'CPU us/event':>12}  "
        "load before -> after"
    )
    lines = [
        f"bench-intake-scale on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {_cpu_count()} cores, {shape}, "
        f"{args.partitions} partitions, {args.events:,} events per run, batch size "
        f"{overrides.get('batch_size', 'default')}",
        "",
        header,
        "-" * len(header),
    ]
    for run in runs:
        each = ", ".join(f"{n / run.seconds:,.0f}" for n in run.per_process)
        cpu = ", ".join(f"{s:.1f}" for s in run.cpu_seconds)
        per_event = 1e6 * sum(run.cpu_seconds) / run.events
        lines.append(
            f"{run.instances:>9} {run.events:>8,} {run.seconds:>8.1f} {run.rate:>9,.0f} "
            f"{run.rate / one if one else 0:>7.2f}x {each:<30} {cpu:<18} {per_event:>12,.0f}  "
            f"{run.load_before} -> {run.load_after}"
        )
    best = max(runs, key=lambda r: r.rate)
    lines += [
        "",
        "CPU us/event: the intake processes' own CPU time (start-up and group join included) per "
        "event; 1e6 / it is what one free core would allow.",
        "",
        f"bench-intake-scale: best={best.rate:,.0f} ev/s with {best.instances} process(es) "
        f"target(>={TARGET_RATE:,.0f} ev/s)={'PASS' if best.rate >= TARGET_RATE else 'FAIL'}; "
        + ", ".join(f"{r.instances}proc={r.rate:,.0f}" for r in runs),
    ]
    print("\n".join(lines), flush=True)
    return 0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
