"""Memory and CPU of each service process under load (``make bench-resources``): the figures
behind the Kubernetes resource requests and limits (deploy/k8s, docs/capacity.md).

    .venv/bin/python -m benchmarks.bench_resources [--rate 1000] [--seconds 30]
        [--web-rate 50] [--idle-seconds 10] [--all-kinds]
    .venv/bin/python -m benchmarks.bench_resources --backlog 1000000 [--every 100000]
        [--max-growth 0.2]                                    (``make bench-memory``)
        [--probe confirmer [--probe-out FILE] [--slow-confirmer 0.5]]   (benchmarks/memory_probe.py)

Starts every service of ``optout run all`` as its own OS process (``optout run standins``,
``intake``, ``confirmer``, ``connector NAME`` for each destination of the shipped
destinations file or, with ``--all-kinds``, of deploy/destinations.all-kinds.toml (every
real kind against the stand-ins, the SFTP mail house on the stack's sshd), ``web``,
``exporter``) on a fresh database and fresh topics of the
real stack, each with its own metrics port, and waits until every ``/readyz`` answers 200.
Then, sampling every process once a second from ``/proc`` (VmRSS; utime + stime):

1. idle for ``--idle-seconds``: resident memory and CPU with nothing to do;
2. load: ``--rate`` opt-outs a second published to ``optout.requests`` for ``--seconds``
   (the benchmarks' realistic mix), and ``--web-rate`` one-click POSTs a second to the web
   service, then until every request is confirmed (drain).

It prints, per process: RSS idle and peak (MiB), CPU as % of one core (mean over load and
drain, and the highest 5-second window), and CPU seconds per 1,000 opt-outs; then the
database's rows and bytes per request by table and the topics' bytes per message (the
storage figures of docs/capacity.md). The machine
(2 cores here) is shared with the broker, the database and other users: the load average
is printed with the figures.

``--backlog N`` measures instead whether memory stays flat through a long backlog: N
opt-outs are produced to ``optout.requests`` before the pipeline's processes (stand-ins,
intake, confirmer, the connectors) start; then, every ``--every`` confirmed requests, the
resident size of each process is printed. A process passes when none of its later figures
exceeds its first (after the first ``--every`` requests: warmed up, every service busy) by
more than ``--max-growth`` (20%). The last line says PASS or FAIL per process and overall.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from benchmarks.common import (
    BenchEnv,
    close_env,
    generate_events,
    load_average,
    note,
    open_env,
    preload,
    setup_logging,
    start_stack,
)
from services.common.avro import default_codec
from services.common.contract import Scope
from services.common.destinations import load_destinations
from services.common.kafka import make_producer
from services.common.settings import Settings
from services.web.links import mint_link
from services.web.tokens import keyring_from_settings

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
WINDOW_SECONDS = 5
DRAIN_TIMEOUT = 180.0
BENCH_TOKEN_KEYS = '{"bench": "YmVuY2gtcmVzb3VyY2VzLWtleS0zMi1ieXRlcy0hISE"}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its waited-for children, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its live children (web workers, if any)."""
    total = 0
    for one in [pid, *_children(pid)]:
        try:
            total += int(Path(f"/proc/{one}/statm").read_text().split()[1]) * PAGE
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(c) for c in text.split()]


@dataclass
class Service:
    name: str
    spec: list[str]
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (t, cpu s, rss)

    def sample(self) -> None:
        assert self.proc is not None
        now = time.monotonic()
        self.samples.append((now, cpu_seconds(self.proc.pid), rss_bytes(self.proc.pid)))


@dataclass
class Phase:
    start: float
    end: float


def _window(service: Service, phase: Phase) -> list[tuple[float, float, int]]:
    return [s for s in service.samples if phase.start <= s[0] <= phase.end]


def rss_max(service: Service, phase: Phase) -> float:
    return max((s[2] for s in _window(service, phase)), default=0) / 2**20


def cpu_mean(service: Service, phase: Phase) -> float:
    window = _window(service, phase)
    if len(window) < 2:
        return 0.0
    return 100 * (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


def cpu_peak(service: Service, phase: Phase) -> float:
    window = _window(service, phase)
    best = 0.0
    for i, (t0, c0, _) in enumerate(window):
        for t1, c1, _ in window[i + 1 :]:
            if t1 - t0 >= WINDOW_SECONDS:
                best = max(best, 100 * (c1 - c0) / (t1 - t0))
                break
    return best


def cpu_used(service: Service, phase: Phase) -> float:
    window = _window(service, phase)
    return window[-1][1] - window[0][1] if len(window) >= 2 else 0.0


def service_env(env: BenchEnv, work: Path, web_port: int) -> dict[str, str]:
    """The OPTOUT_* environment of every process: this run's database, topics and ports."""
    esp, partners = free_port(), free_port()
    standin_ports = {
        f"OPTOUT_{name.upper()}": str(free_port())
        for name in Settings.model_fields
        if name.startswith("standin_") and name.endswith("_port")
    }
    base = f"http://127.0.0.1:{partners}/partners"
    return {
        **os.environ,
        **standin_ports,
        "OPTOUT_KAFKA_BOOTSTRAP": env.settings.kafka_bootstrap,
        "OPTOUT_DATABASE_URL": env.dsn(),
        "OPTOUT_TOPIC_PREFIX": env.settings.topic_prefix,
        "OPTOUT_TOPIC_PARTITIONS": str(env.settings.topic_partitions),
        "OPTOUT_LOG_FORMAT": "json",
        "OPTOUT_LOG_LEVEL": "warning",
        "OPTOUT_MAIL_HOUSE_DIR": str(work / "mail_house"),
        "OPTOUT_STANDIN_EMAIL_PROVIDER_PORT": str(esp),
        "OPTOUT_STANDIN_PARTNERS_PORT": str(partners),
        "OPTOUT_EMAIL_PROVIDER_URL": f"http://127.0.0.1:{esp}",
        "OPTOUT_PARTNERS": json.dumps(
            [
                {"name": "adnetwork", "url": f"{base}/adnetwork", "token": "dev-adnetwork-token"},
                {"name": "databroker", "url": f"{base}/databroker", "token": "dev-databroker-token"},
            ]
        ),
        "OPTOUT_WEB_PORT": str(web_port),
        "OPTOUT_WEB_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "OPTOUT_WEB_TOKEN_KEYS": BENCH_TOKEN_KEYS,
        "OPTOUT_WEB_CURRENT_KID": "bench",
        "OPTOUT_WEB_RATE_LIMIT_PER_SECOND": "100000",
        "OPTOUT_WEB_RATE_LIMIT_BURST": "100000",
    }


def all_kinds_environment(work: Path) -> dict[str, str]:
    """deploy/destinations.all-kinds.toml with its development credentials, the stand-ins on
    free ports, and a fresh inbox on the local stack's SFTP server (as `make run
    DESTINATIONS=...` and tests/e2e/test_all_destinations.py set them up)."""
    inbox_root = os.environ.get("OPTOUT_STANDIN_SFTP_INBOX", "")
    if not inbox_root or not os.environ.get("OPTOUT_SFTP_PRIVATE_KEY_FILE"):
        raise SystemExit("--all-kinds needs the local stack's sshd: eval the devstack env first")
    inbox = Path(inbox_root) / f"res{time.time_ns()}"
    inbox.mkdir()
    owner = Path(inbox_root).stat()
    os.chown(inbox, owner.st_uid, owner.st_gid)
    known_hosts = work / "known_hosts"
    known_hosts.write_bytes(Path(os.environ["OPTOUT_SFTP_KNOWN_HOSTS"]).read_bytes())
    env = {
        "OPTOUT_DESTINATIONS_FILE": str(ROOT / "deploy" / "destinations.all-kinds.toml"),
        "OPTOUT_STANDIN_SFTP_INBOX": str(inbox),
        "OPTOUT_SFTP_REMOTE_DIR": f"{os.environ.get('OPTOUT_SFTP_REMOTE_DIR', '/inbox')}/{inbox.name}",
        "OPTOUT_SFTP_KNOWN_HOSTS": str(known_hosts),
    }
    for line in (ROOT / "deploy" / "destinations.all-kinds.env").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    for name in Settings.model_fields:  # the stand-ins' ports, free ones
        if name.startswith("standin_") and name.endswith("_port"):
            env[f"OPTOUT_{name.upper()}"] = str(free_port())
    return env


def start(service: Service, environ: dict[str, str], log_dir: Path, probe: Sequence[str] = ()) -> None:
    """Start ``optout run SPEC``; with ``probe`` (``benchmarks.memory_probe``'s arguments),
    under the memory probe."""
    log = (log_dir / f"{service.name}.log").open("wb")
    command = ["-m", "benchmarks.memory_probe", *probe, "--"] if probe else ["-m", "services.cli.main"]
    service.proc = subprocess.Popen(
        [sys.executable, *command, "run", *service.spec],
        cwd=ROOT,
        env={**environ, "OPTOUT_METRICS_PORT": str(service.metrics_port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()


def wait_ready(services: Sequence[Service], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending and time.monotonic() < deadline:
        for service in list(pending):
            assert service.proc is not None
            if service.proc.poll() is not None:
                raise SystemExit(f"{service.name} exited with {service.proc.returncode} before ready")
            try:
                url = f"http://127.0.0.1:{service.metrics_port}/readyz"
                if httpx.get(url, timeout=1).status_code == 200:
                    pending.remove(service)
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    if pending:
        raise SystemExit(f"not ready within {timeout:.0f} s: {', '.join(s.name for s in pending)}")


def stop(services: Sequence[Service]) -> None:
    for service in services:
        if service.proc is not None and service.proc.poll() is None:
            service.proc.send_signal(signal.SIGTERM)
    for service in services:
        if service.proc is None:
            continue
        try:
            service.proc.wait(30)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(10)


class Sampler(threading.Thread):
    def __init__(self, services: Sequence[Service]) -> None:
        super().__init__(name="sampler", daemon=True)
        self.services = services
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for service in self.services:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    service.sample()
            self.halt.wait(1.0)


def publish(settings: Settings, rate: int, seconds: float) -> int:
    """``rate`` events a second for ``seconds``, paced in 100 ms slices; returns the count."""
    codec = default_codec()
    producer = make_producer(settings, **{"linger.ms": 20})
    events = generate_events(rate * int(seconds) + rate, seed=int(time.time()))
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed) + max(1, rate // 10)
        while sent < due:
            event = next(events)
            producer.produce(
                settings.requests_topic,
                value=codec.encode("OptOutRequested", event.record),
                key=event.key,
            )
            sent += 1
            producer.poll(0)
        time.sleep(0.1)
    if producer.flush(60):
        raise SystemExit("publish: delivery reports still pending after 60 s")
    return sent


def drive_web(settings: Settings, port: int, rate: int, seconds: float, result: dict[str, int]) -> None:
    """``rate`` one-click POSTs a second (each a fresh minted link) for ``seconds``."""
    if rate <= 0:
        return
    cfg = settings.model_copy(
        update={
            "web_public_url": f"http://127.0.0.1:{port}",
            "web_token_keys": SecretStr(BENCH_TOKEN_KEYS),
            "web_current_kid": "bench",
        }
    )
    ring = keyring_from_settings(cfg)
    count = int(rate * seconds)
    paths = [
        mint_link(
            cfg,
            email=f"res{i}.{time.time_ns()}@example.com",
            customer_id=f"res-{i}",
            scopes=[Scope.EMAIL_MARKETING],
            ring=ring,
        ).url.split(str(port), 1)[1]
        for i in range(count)
    ]
    started = time.monotonic()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for i, path in enumerate(paths):
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            response = client.post(path, data={"List-Unsubscribe": "One-Click"})
            key = "ok" if response.status_code == 200 else f"http_{response.status_code}"
            result[key] = result.get(key, 0) + 1


TABLES = ("requests", "destination_status", "connector_applied", "suppression_list", "schema_migrations")


def table_sizes(dsn: str) -> list[tuple[str, int, int]]:
    """(table, rows, bytes with indexes and TOAST) of the pipeline's tables."""
    out = []
    with psycopg.connect(dsn) as conn:
        conn.execute("ANALYZE")
        for table in TABLES:
            found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if not found or found[0] is None:
                continue
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            size = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()
            out.append((table, int(rows[0]) if rows else 0, int(size[0]) if size else 0))
    return out


def topic_sizes(settings: Settings, timeout: float = 60.0) -> list[tuple[str, int, int]]:
    """(topic, messages, bytes of keys + values + headers) of every pipeline topic, read
    from the beginning to the high watermarks (payload only: no batch/record overhead)."""
    consumer = Consumer(
        {**settings.kafka_config(), "group.id": f"bench-size-{time.time_ns()}", "enable.auto.commit": False}
    )
    out = []
    try:
        metadata = consumer.list_topics(timeout=10)
        for topic in settings.all_topics():
            parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions]
            ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
            expected = sum(ends.values())
            consumer.assign(parts)
            count = size = 0
            deadline = time.monotonic() + timeout
            while count < expected and time.monotonic() < deadline:
                for message in consumer.consume(1000, timeout=1.0):
                    if message.error():
                        continue
                    count += 1
                    size += len(message.key() or b"") + len(message.value() or b"")
                    size += sum(len(k) + len(v or b"") for k, v in message.headers() or [])
            consumer.unassign()
            out.append((topic.removeprefix(settings.topic_prefix), count, size))
    finally:
        consumer.close()
    return out


def consumed(metrics_port: int, service: str) -> int:
    """Messages ``service`` consumed so far (every outcome), from its ``/metrics``; 0 when
    it does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("optout_messages_consumed_total{")
            and f'service="{service}"' in line
            and 'outcome="failed"' not in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def confirmed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM requests WHERE confirmed_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


# --- memory through a long backlog (--backlog) ----------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    confirmed: int
    seconds: float  # since the pipeline started
    rss: dict[str, int]  # process -> bytes
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds so far
    recorded: int = 0  # requests intake had consumed by then (ahead of the confirmations)


def growth_verdicts(checkpoints: Sequence[Checkpoint], max_growth: float) -> dict[str, tuple[float, bool]]:
    """Per process: its largest RSS after the first checkpoint relative to the first, and
    whether that stays within ``max_growth`` (0.2: 20% above where it started)."""
    if not checkpoints:
        return {}
    first = checkpoints[0].rss
    verdicts: dict[str, tuple[float, bool]] = {}
    for name, start_rss in first.items():
        later = [c.rss.get(name, 0) for c in checkpoints[1:]] or [start_rss]
        ratio = max(later) / start_rss if start_rss else 0.0
        verdicts[name] = (ratio, ratio <= 1 + max_growth)
    return verdicts


def probe_args(args: argparse.Namespace) -> list[str]:
    """``benchmarks.memory_probe``'s arguments for ``--probe``."""
    default = Path(tempfile.gettempdir()) / f"bench-memory-probe-{time.strftime('%H%M%S')}.jsonl"
    out = args.probe_out or default
    found = [str(out), "--every", str(args.probe_every)]
    if args.slow_confirmer:
        found += ["--slow-confirmer", str(args.slow_confirmer)]
    note(f"{args.probe} runs under benchmarks.memory_probe; its snapshots go to {out}")
    return found


def run_backlog(args: argparse.Namespace) -> int:
    """The ``--backlog`` mode (see the module docstring)."""
    load_start = load_average()
    stack = start_stack()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    finished = False
    env = open_env(stack, "mem", partitions=6)
    environ = service_env(env, work, free_port())
    services = [
        Service("standins", ["standins"], free_port()),
        Service("intake", ["intake"], free_port()),
        Service("confirmer", ["confirmer"], free_port()),
        *(Service(f"connector {n}", ["connector", n], free_port()) for n in load_destinations().names),
    ]
    checkpoints: list[Checkpoint] = []
    idle: dict[str, int] = {}
    done = 0
    try:
        note(f"producing a backlog of {args.backlog:,} opt-outs")
        loaded = preload(env.settings, args.backlog, seed=int(time.time()))
        note(f"backlog produced in {loaded.seconds:.0f} s; starting the pipeline (logs in {work})")
        for service in services:
            start(service, environ, work, probe_args(args) if service.name == args.probe else ())
        wait_ready(services)
        for service in services:
            assert service.proc is not None
            idle[service.name] = rss_bytes(service.proc.pid)
        started = time.monotonic()
        deadline = started + args.backlog / 100 + DRAIN_TIMEOUT  # at least 100 confirmed/s
        next_mark = args.every
        last_progress = 0.0
        while done < args.backlog and time.monotonic() < deadline:
            time.sleep(2.0)
            for service in services:
                assert service.proc is not None
                if service.proc.poll() is not None:
                    raise SystemExit(f"{service.name} exited with {service.proc.returncode}; see {work}")
            done = confirmed(env.dsn())
            while done >= next_mark:
                rss = {s.name: rss_bytes(s.proc.pid) for s in services if s.proc is not None}
                cpu = {s.name: cpu_seconds(s.proc.pid) for s in services if s.proc is not None}
                recorded = consumed(services[1].metrics_port, "intake")
                checkpoints.append(Checkpoint(next_mark, time.monotonic() - started, rss, cpu, recorded))
                note(
                    f"{next_mark:,} confirmed at {time.monotonic() - started:.0f} s "
                    f"(intake {recorded:,} consumed; load {load_average()}): "
                    + ", ".join(f"{n} {b / 2**20:.0f}Mi" for n, b in rss.items())
                )
                next_mark += args.every
            if time.monotonic() - last_progress > 30:
                note(f"{done:,}/{args.backlog:,} confirmed")
                last_progress = time.monotonic()
        elapsed = time.monotonic() - started
        finished = True
    finally:
        stop(services)
        close_env(env)
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            note(f"the services' logs are kept in {work}")
    load_end = load_average()
    names = [s.name for s in services]
    print(
        f"\nbench-memory: a backlog of {args.backlog:,} opt-outs through the pipeline "
        f"({done:,} confirmed in {elapsed:.0f} s, {done / elapsed if elapsed else 0:,.0f}/s); resident "
        f"size (MiB) of each process every {args.every:,} confirmed requests"
    )
    print(
        f"{'confirmed':>10} {'s':>6} " + " ".join(f"{n.removeprefix('connector ')[:14]:>14}" for n in names)
    )
    print(f"{'idle':>10} {'':>6} " + " ".join(f"{idle.get(n, 0) / 2**20:>14.0f}" for n in names))
    for c in checkpoints:
        print(
            f"{c.confirmed:>10,} {c.seconds:>6.0f} "
            + " ".join(f"{c.rss.get(n, 0) / 2**20:>14.0f}" for n in names)
        )
    print(
        "CPU seconds of each process between checkpoints, and requests intake had consumed by "
        "each (intake ahead of the confirmations: the drain waits on the services after it)"
    )
    print(
        f"{'confirmed':>10} {'intake had':>10} "
        + " ".join(f"{n.removeprefix('connector ')[:14]:>14}" for n in names)
    )
    previous: dict[str, float] = {}
    for c in checkpoints:
        print(
            f"{c.confirmed:>10,} {c.recorded:>10,} "
            + " ".join(f"{c.cpu.get(n, 0) - previous.get(n, 0):>14.1f}" for n in names)
        )
        previous = c.cpu
    verdicts = growth_verdicts(checkpoints, args.max_growth)
    print(
        f"largest RSS after the first checkpoint / RSS at the first (limit {1 + args.max_growth:.2f}): "
        + ", ".join(
            f"{n} {r:.2f} " + ("(a stand-in: not judged)" if n == "standins" else "PASS" if ok else "FAIL")
            for n, (r, ok) in verdicts.items()
        )
    )
    print(
        f"({os.cpu_count()} cores shared with the broker, the database and other users; load average "
        f"before {load_start}, after {load_end}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )
    # The stand-ins are test doubles that keep every body they were sent (for the tests): not judged.
    judged = {n: v for n, v in verdicts.items() if n != "standins"}
    passed = bool(judged) and done >= args.backlog and all(ok for _, ok in judged.values())
    print(
        f"bench-memory: backlog={args.backlog:,} confirmed={done:,} "
        f"memory_flat(<= +{args.max_growth:.0%})={'PASS' if passed else 'FAIL'}"
    )
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="opt-outs published a second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to publish")
    parser.add_argument("--web-rate", type=int, default=50, help="one-click POSTs a second")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--all-kinds",
        action="store_true",
        help="the connectors of deploy/destinations.all-kinds.toml (every real kind against the "
        "stand-ins, the SFTP mail house on the stack's sshd) instead of the shipped file's",
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="memory through a backlog of this many opt-outs instead"
    )
    parser.add_argument("--every", type=int, default=100_000, help="--backlog: print RSS every N confirmed")
    parser.add_argument(
        "--max-growth", type=float, default=0.2, help="--backlog: allowed RSS growth over the first figure"
    )
    parser.add_argument(
        "--probe",
        default="",
        help="--backlog: run this process (e.g. confirmer) under benchmarks.memory_probe (RSS, "
        "malloc arenas, Python objects, librdkafka's queue every --probe-every seconds)",
    )
    parser.add_argument("--probe-out", type=Path, default=None, help="--probe: its JSON lines file")
    parser.add_argument("--probe-every", type=float, default=15.0, help="--probe: seconds between snapshots")
    parser.add_argument(
        "--slow-confirmer",
        type=float,
        default=0.0,
        help="--probe confirmer: sleep this long before each batch (the confirmer falls behind)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    if args.slow_confirmer and args.probe != "confirmer":
        raise SystemExit("--slow-confirmer needs --probe confirmer")
    if args.backlog:
        return run_backlog(args)
    if os.environ.get("OPTOUT_DESTINATIONS_FILE"):
        raise SystemExit("unset OPTOUT_DESTINATIONS_FILE (--all-kinds chooses the other file)")
    load_start = load_average()
    stack = start_stack()
    work = Path(tempfile.mkdtemp(prefix="bench-resources-"))
    extra = all_kinds_environment(work) if args.all_kinds else {}
    os.environ.update(extra)  # this process reads the same destinations file
    env = open_env(stack, "res", partitions=6)
    web_port = free_port()
    environ = {**service_env(env, work, web_port), **extra}
    names = load_destinations(Path(extra["OPTOUT_DESTINATIONS_FILE"]) if extra else None).names
    services = [
        Service("standins", ["standins"], free_port()),
        Service("intake", ["intake"], free_port()),
        Service("confirmer", ["confirmer"], free_port()),
        *(Service(f"connector {n}", ["connector", n], free_port()) for n in names),
        Service("web", ["web"], free_port()),
        Service("exporter", ["exporter"], free_port()),
    ]
    sampler = Sampler(services)
    web_result: dict[str, int] = {}
    try:
        for service in services:
            start(service, environ, work)
        wait_ready(services)
        note(f"every service ready; logs in {work}")
        sampler.start()
        idle = Phase(time.monotonic(), time.monotonic() + args.idle_seconds)
        time.sleep(args.idle_seconds)
        load = Phase(time.monotonic(), 0.0)
        web = threading.Thread(
            target=drive_web, args=(env.settings, web_port, args.web_rate, args.seconds, web_result)
        )
        web.start()
        sent = publish(env.settings, args.rate, args.seconds)
        web.join()
        expected = sent + web_result.get("ok", 0)
        note(f"published {sent} (+{web_result} from the web); draining")
        deadline = time.monotonic() + DRAIN_TIMEOUT
        done = 0
        while time.monotonic() < deadline:
            done = confirmed(env.dsn())
            if done >= expected:
                break
            time.sleep(1.0)
        load.end = time.monotonic()
        time.sleep(1.5)
        load_end = load_average()
        sampler.halt.set()
        stop(services)
        tables = table_sizes(env.dsn())
        topics = topic_sizes(env.settings)
    finally:
        sampler.halt.set()
        stop(services)
        close_env(env)
        if extra:
            shutil.rmtree(extra["OPTOUT_STANDIN_SFTP_INBOX"], ignore_errors=True)
    offsets_note = f"{done:,} of {expected:,} requests confirmed"
    print(
        f"\nservice processes under load: {args.rate}/s opt-outs for {args.seconds:.0f} s + "
        f"{args.web_rate}/s one-click POSTs, then drained ({offsets_note}, "
        f"{load.end - load.start:.0f} s in all); idle {args.idle_seconds:.0f} s before"
    )
    print(
        f"{'process':<34} {'RSS idle':>9} {'RSS peak':>9} {'CPU idle':>9} {'CPU mean':>9} "
        f"{'CPU peak5s':>10} {'CPU s/1k':>9}"
    )
    for s in services:
        per_k = 1000 * cpu_used(s, load) / max(expected, 1)
        print(
            f"{s.name:<34} {rss_max(s, idle):>7.0f}Mi {rss_max(s, load):>7.0f}Mi "
            f"{cpu_mean(s, idle):>8.1f}% {cpu_mean(s, load):>8.1f}% {cpu_peak(s, load):>9.1f}% "
            f"{per_k:>9.3f}"
        )
    print(
        f"(RSS in MiB; CPU in % of one core; {os.cpu_count()} cores shared with the broker, the "
        f"database and other users; load average before {load_start}, after {load_end}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )
    requests = next((rows for name, rows, _ in tables if name == "requests"), 0) or 1
    print(f"\ndatabase after the run ({requests:,} requests; bytes include indexes and TOAST):")
    print(f"{'table':<22} {'rows':>10} {'MiB':>8} {'rows/request':>13} {'bytes/request':>14}")
    for name, rows, size in tables:
        print(
            f"{name:<22} {rows:>10,} {size / 2**20:>8.1f} {rows / requests:>13.2f} {size / requests:>14,.0f}"
        )
    print("\ntopics after the run (keys + values + headers; the broker adds batch overhead):")
    print(f"{'topic':<40} {'messages':>10} {'MiB':>8} {'bytes/message':>14} {'bytes/request':>14}")
    for name, count, size in topics:
        per = size / count if count else 0.0
        print(f"{name:<40} {count:>10,} {size / 2**20:>8.1f} {per:>14,.0f} {size / requests:>14,.0f}")
    return 0 if done >= expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
