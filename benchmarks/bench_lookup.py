"""The lookup API's throughput and latency (``make bench-lookup``), with in the same run the
rate of a bare psycopg loop doing the same primary-key reads, as the limit.

    .venv/bin/python -m benchmarks.bench_lookup [--rows 200000] [--seconds 10] [--workers 2]
        [--clients 2] [--connections 4]

Fills ``suppression_state`` of a fresh database with ``--rows`` subjects (COPY, not intake:
this measures reads), starts ``optout run lookup`` as its own process (``--workers`` uvicorn
processes), then:

* single lookups: ``--clients`` load-generator processes, ``--connections`` keep-alive HTTP
  connections each, ``GET /v1/suppressions?email=<raw email>`` of random people for
  ``--seconds`` (the service normalizes and hashes each email, as a sender's call makes it);
* batch checks: the same processes, 2 connections each, ``POST /v1/suppressions:check`` with
  1,000 ``email_sha256`` identifiers per request;
* the limit: ``--clients`` processes each running ``SELECT ... FROM suppression_state WHERE
  subject = %s`` in a loop (one connection, prepared, autocommit), then the same with
  ``= ANY(%s)`` of 1,000 subjects.

The load generators run on the same cores as the service and PostgreSQL: the figures are
those of a 2-core machine doing everything at once. The load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import close_env, load_average, note, open_env, setup_logging, start_stack

API_KEY = "bench-lookup-key-0123456789"
BATCH = 1000
SINGLE_TARGET = 5000
P99_TARGET_MS = 10.0
BATCH_TARGET = 100_000
COLUMNS = "subject, scope, suppressed, since, event_id, action"
QUERY_ONE = f"SELECT {COLUMNS} FROM suppression_state WHERE subject = %s"
QUERY_MANY = f"SELECT {COLUMNS} FROM suppression_state WHERE subject = ANY(%s)"


def email(i: int) -> str:
    return f"person-{i}@example.com"


def subject(i: int) -> str:
    return "email_sha256:" + hashlib.sha256(email(i).encode()).hexdigest()


def fill(dsn: str, rows: int) -> None:
    """``rows`` subjects, EMAIL_MARKETING; two in three suppressed, the others opted back in."""
    now = datetime.now(UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY suppression_state ({COLUMNS}, updated_at) FROM STDIN") as copy:
            for i in range(rows):
                out = i % 3 != 0
                copy.write_row(
                    (subject(i), "EMAIL_MARKETING", out, now, f"evt-{i}", "OPT_OUT" if out else "OPT_IN", now)
                )
        cur.execute("ANALYZE suppression_state")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * pct / 100)))] if ordered else 0.0


# --- the load generator: plain HTTP/1.1 keep-alive over asyncio streams ------------------------
async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


def _request(kind: str, rng: random.Random) -> bytes:
    if kind == "single":
        path = f"/v1/suppressions?email={rng.choice(EMAILS)}"
        return f"GET {path} HTTP/1.1\r\nHost: lookup\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
    ids = [{"email_sha256": s[13:]} for s in rng.sample(SUBJECTS, BATCH)]
    body = json.dumps({"identifiers": ids}).encode()
    head = (
        f"POST /v1/suppressions:check HTTP/1.1\r\nHost: lookup\r\nAuthorization: Bearer {API_KEY}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(port: int, kind: str, until: float, seed: int, latencies: list[float]) -> int:
    rng = random.Random(seed)
    # Requests are made before the clock starts (a pool of random ones, reused): building a
    # 1,000-identifier JSON body per request would take the service's CPU away.
    requests = [_request(kind, rng) for _ in range(200 if kind == "single" else 20)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        while time.perf_counter() < until:
            request = rng.choice(requests)
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            if status != 200:
                errors += 1
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
    return errors


Results = "Queue[tuple[list[float], int]]"  # a string: multiprocessing's Queue is not generic at run time
# Precomputed before the processes fork (a sha256 per identifier would load the generators).
SUBJECTS: list[str] = []
EMAILS: list[str] = []


def _client(port: int, kind: str, seconds: float, connections: int, seed: int, out: Results) -> None:
    async def run() -> tuple[list[float], int]:
        until = time.perf_counter() + seconds
        per: list[list[float]] = [[] for _ in range(connections)]
        errors = await asyncio.gather(
            *(_connection(port, kind, until, seed * 1000 + c, per[c]) for c in range(connections))
        )
        return [x for lat in per for x in lat], sum(errors)

    out.put(asyncio.run(run()))


def _bare(dsn: str, kind: str, seconds: float, seed: int, out: Results) -> None:
    rng = random.Random(seed)
    latencies: list[float] = []
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        until = time.perf_counter() + seconds
        while (now := time.perf_counter()) < until:
            if kind == "single":
                conn.execute(QUERY_ONE, (rng.choice(SUBJECTS),)).fetchall()
            else:
                conn.execute(QUERY_MANY, (rng.sample(SUBJECTS, BATCH),)).fetchall()
            latencies.append(time.perf_counter() - now)
    out.put((latencies, 0))


def run_processes(target: Callable[..., None], args: Sequence[tuple[object, ...]]) -> tuple[list[float], int]:
    """Run ``target(*a, queue)`` in one forked process per ``a``; gather their latencies."""
    context = multiprocessing.get_context("fork")
    queue: Results = context.Queue()
    procs = [context.Process(target=target, args=(*a, queue)) for a in args]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return [x for lat, _ in results for x in lat], sum(e for _, e in results)


def start_lookup(env_vars: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    # The service's log lines go to stderr: stdout carries only the report.
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", "lookup"], env=env_vars, stdout=sys.stderr
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"optout run lookup exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("optout run lookup did not listen within 60 s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes of the service")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=4, help="HTTP connections per generator")
    args = parser.parse_args(argv)
    setup_logging()
    load_start = load_average()
    env = open_env(start_stack(), "lookup", partitions=1)
    proc: subprocess.Popen[bytes] | None = None
    try:
        note(f"filling suppression_state with {args.rows:,} subjects")
        fill(env.dsn(), args.rows)
        SUBJECTS.extend(subject(i) for i in range(args.rows))
        EMAILS.extend(quote(email(i)) for i in range(args.rows))
        port = free_port()
        variables = {
            **os.environ,
            "OPTOUT_DATABASE_URL": env.dsn(),
            "OPTOUT_KAFKA_BOOTSTRAP": env.settings.kafka_bootstrap,
            "OPTOUT_TOPIC_PREFIX": env.settings.topic_prefix,
            "OPTOUT_LOOKUP_PORT": str(port),
            "OPTOUT_LOOKUP_WORKERS": str(args.workers),
            "OPTOUT_LOOKUP_API_KEYS": json.dumps([API_KEY]),
            "OPTOUT_LOG_LEVEL": "warning",
            "OPTOUT_METRICS_PORT": "0",
        }
        proc = start_lookup(variables, port)
        seeds = range(args.clients)
        note(f"single lookups: {args.clients} x {args.connections} connections, {args.seconds:.0f} s")
        single, single_errors = run_processes(
            _client, [(port, "single", args.seconds, args.connections, s) for s in seeds]
        )
        note(f"batch checks of {BATCH:,}: {args.clients} x 2 connections, {args.seconds:.0f} s")
        batch, batch_errors = run_processes(_client, [(port, "batch", args.seconds, 2, s) for s in seeds])
        load_api = load_average()
        proc.terminate()
        proc.wait(30)
        proc = None
        note(f"the limit: {args.clients} bare psycopg loops, same reads, {args.seconds:.0f} s each")
        bare_single, _ = run_processes(_bare, [(env.dsn(), "single", args.seconds, s) for s in seeds])
        bare_batch, _ = run_processes(_bare, [(env.dsn(), "batch", args.seconds, s) for s in seeds])
        secs = args.seconds
        rate = len(single) / secs
        ids_rate = len(batch) * BATCH / secs
        print(
            f"\nlookup API (optout run lookup, {args.workers} workers), {args.rows:,} subjects, "
            f"{os.cpu_count()} cores shared with PostgreSQL, Kafka and the load generators"
        )
        print(
            f"{'':28} {'ours':>14} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'limit: bare psycopg':>22} {'p99 ms':>7}  target"
        )
        print(
            f"{'single lookups (GET ?email)':28} {rate:>12,.0f}/s {1000 * percentile(single, 50):>7.2f} "
            f"{1000 * percentile(single, 99):>7.2f} {len(bare_single) / secs:>20,.0f}/s "
            f"{1000 * percentile(bare_single, 99):>7.2f}  "
            f">= {SINGLE_TARGET:,}/s, p99 < {P99_TARGET_MS:.0f} ms"
        )
        print(
            f"{'batch checks (ids/s)':28} {ids_rate:>12,.0f}/s {1000 * percentile(batch, 50):>7.2f} "
            f"{1000 * percentile(batch, 99):>7.2f} {len(bare_batch) * BATCH / secs:>20,.0f}/s "
            f"{1000 * percentile(bare_batch, 99):>7.2f}  >= {BATCH_TARGET:,} ids/s"
        )
        if single_errors or batch_errors:
            print(f"NOT 200: {single_errors} single lookups, {batch_errors} batch checks")
        print(
            f"(load average before {load_start}, after the API runs {load_api}, at the end {load_average()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        close_env(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
