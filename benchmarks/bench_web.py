"""One-click unsubscribe throughput and latency on loopback (``make bench-web``).

    .venv/bin/python benchmarks/bench_web.py [--workers 1,2] [--seconds 15] [--warmup 3]
        [--connections 16,64] [--tokens 5000]

For each connection count and worker count, starts ``optout run web`` as its own process (OPTOUT_WEB_WORKERS=N
uvicorn workers sharing one socket) against the real broker, then drives RFC 8058
one-click POSTs (``List-Unsubscribe=One-Click``, one of ``--tokens`` distinct minted links
each) from a closed-loop load generator: ``--connections`` keep-alive HTTP/1.1 connections
on raw asyncio sockets in this process, each sending its next request when the previous
answer arrived. Every 200 means the broker acknowledged that request's message, and the
count of messages on the requests topic is checked against the count of 200s.

The clock runs for ``--seconds`` after ``--warmup`` seconds of unmeasured load. Output:
requests/s, latency p50/p95/p99/max (ms), status counts, the CPU load; the last line is
a one-line summary. Bounded: every phase stops by itself; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import KafkaException
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    BenchEnv,
    EndOffsets,
    close_env,
    load_average,
    note,
    open_env,
    setup_logging,
    start_stack,
)
from services.common.contract import Scope
from services.devstack import StackInfo
from services.web.links import mint_link
from services.web.tokens import generate_key, keyring_from_settings

ROOT = Path(__file__).resolve().parents[1]
BODY = b"List-Unsubscribe=One-Click"
TARGET_RPS = 2000.0
TARGET_P99_MS = 50.0


@dataclass
class Result:
    workers: int
    connections: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    ok_all: int = 0  # 200s including the warm-up
    on_topic: int = 0
    load: str = ""

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        index = min(len(data) - 1, max(0, round(q / 100 * len(data)) - 1))
        return data[index] * 1000


@retry(
    retry=retry_if_exception_type(KafkaException),
    wait=wait_fixed(0.5),
    stop=stop_after_attempt(20),
    reraise=True,
)
def _delivered(offsets: EndOffsets) -> int:
    """Messages on the topic (retried while fresh partitions still elect their leader)."""
    return offsets.total()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the load generator ---------------------------------------------------------------------
async def _connection(
    port: int,
    paths: list[bytes],
    offset: int,
    stride: int,
    stop_at: float,
    measure_from: float,
    result: Result,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = offset
    try:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            path = paths[index % len(paths)]
            index += stride
            writer.write(
                b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
            )
            started = time.perf_counter()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            finished = time.perf_counter()
            result.ok_all += status == 200
            if started >= measure_from:
                result.latencies.append(finished - started)
                result.statuses[status] += 1
    except (ConnectionError, asyncio.IncompleteReadError):
        result.errors += 1
    finally:
        writer.close()


async def _drive(
    port: int, paths: list[bytes], connections: int, warmup: float, seconds: float, result: Result
) -> None:
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    await asyncio.gather(
        *(_connection(port, paths, i, connections, stop_at, measure_from, result) for i in range(connections))
    )


# --- one run ----------------------------------------------------------------------------------
def _start_web(env: BenchEnv, port: int, workers: int) -> subprocess.Popen[bytes]:
    cfg = env.settings
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPTOUT_")}
    environ.update(
        {
            "OPTOUT_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
            "OPTOUT_DATABASE_URL": cfg.dsn(),
            "OPTOUT_TOPIC_PREFIX": cfg.topic_prefix,
            "OPTOUT_WEB_PORT": str(port),
            "OPTOUT_WEB_WORKERS": str(workers),
            "OPTOUT_WEB_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # One client address sends everything here: lift the per-client limit out of the way.
            "OPTOUT_WEB_RATE_LIMIT_PER_SECOND": "1000000",
            "OPTOUT_WEB_RATE_LIMIT_BURST": "1000000",
            "OPTOUT_WEB_TOKEN_KEYS": cfg.web_token_keys.get_secret_value(),
            "OPTOUT_WEB_CURRENT_KID": cfg.web_current_kid,
            "OPTOUT_LOG_LEVEL": "warning",
            "OPTOUT_LOG_FORMAT": "json",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", "web"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the web service exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the web service did not start within 60 s")


def _stop_web(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_once(
    stack: StackInfo, workers: int, connections: int, args: argparse.Namespace, ring_keys: str
) -> Result:
    env = open_env(stack, f"web{workers}", partitions=6, web_token_keys=ring_keys, web_current_kid="bench")
    try:
        port = _free_port()
        base = env.settings.model_copy(update={"web_public_url": f"http://127.0.0.1:{port}"})
        ring = keyring_from_settings(base)
        paths = [
            mint_link(
                base,
                email=f"bench{i}@example.com",
                customer_id=f"cust-{i}",
                scopes=[Scope.EMAIL_MARKETING],
                ring=ring,
            )
            .url.split(str(port), 1)[1]
            .encode()
            for i in range(args.tokens)
        ]
        offsets = EndOffsets(env.settings, [env.settings.requests_topic])
        before = _delivered(offsets)
        proc = _start_web(env, port, workers)
        result = Result(workers=workers, connections=connections, seconds=args.seconds)
        try:
            note(
                f"{workers} worker(s): {connections} connections, {args.warmup:.0f} s warm-up "
                f"+ {args.seconds:.0f} s measured"
            )
            asyncio.run(_drive(port, paths, connections, args.warmup, args.seconds, result))
            result.load = load_average()
        finally:
            _stop_web(proc)
        result.on_topic = _delivered(offsets) - before
        offsets.close()
        return result
    finally:
        close_env(env)


def report(results: list[Result]) -> None:
    print(
        f"\nweb one-click POST, closed loop on loopback, {os.cpu_count()} CPUs "
        "(load generator, web workers and the broker share them)"
    )
    print(
        f"{'workers':>7} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'200s':>8} {'other':>6} {'on topic':>9}  load avg"
    )
    for r in results:
        other = sum(n for code, n in r.statuses.items() if code != 200) + r.errors
        print(
            f"{r.workers:>7} {r.connections:>5} {r.rate:>9,.0f} {r.percentile(50):>8.1f} "
            f"{r.percentile(95):>8.1f} {r.percentile(99):>8.1f} "
            f"{max(r.latencies, default=0) * 1000:>8.1f} {r.ok:>8} {other:>6} {r.on_topic:>9}  {r.load}"
        )
    meeting = [r for r in results if r.rate >= TARGET_RPS and r.percentile(99) < TARGET_P99_MS]
    best = max(meeting or results, key=lambda r: r.rate)
    verdict = "meets" if meeting else "misses"
    print(
        f"summary: best {best.rate:,.0f} req/s p99 {best.percentile(99):.1f} ms with "
        f"{best.workers} worker(s) x {best.connections} connections; {verdict} the target "
        f"({TARGET_RPS:,.0f} req/s with p99 < {TARGET_P99_MS:.0f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--connections", default="16,64", help="comma-separated numbers of concurrent keep-alive connections"
    )
    parser.add_argument("--tokens", type=int, default=5000)
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    connection_counts = [int(c) for c in args.connections.split(",") if c.strip()]
    if not (
        1 <= args.seconds <= 300
        and 0 <= args.warmup <= 60
        and all(1 <= c <= 1000 for c in connection_counts)
        and all(1 <= w <= 8 for w in worker_counts)
    ):
        raise SystemExit("--seconds 1..300, --warmup 0..60, --connections 1..1000, --workers 1..8")
    setup_logging()
    stack = start_stack()
    # A fresh key for the run (never the dev key), like production would have.
    ring_keys = json.dumps({"bench": generate_key()})
    results = []
    for connections in connection_counts:
        for workers in worker_counts:
            result = run_once(stack, workers, connections, args, ring_keys)
            results.append(result)
            if result.on_topic < result.ok_all:
                raise SystemExit(f"only {result.on_topic} messages on the topic for {result.ok_all} 200s")
    report(results)


if __name__ == "__main__":
    main()
