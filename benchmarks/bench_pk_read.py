"""Primary-key reads of the suppression list per second (``make bench-pk-read``): a STAND-IN
for the suppression lookup API's figure until ``bench-lookup`` exists (docs/capacity.md).

    .venv/bin/python -m benchmarks.bench_pk_read [--rows 200000] [--seconds 10] [--connections 1,4]

Fills ``suppression_list`` of a fresh database with ``--rows`` entries (random hashes,
sealed-sized values), then each of ``--connections`` threads runs
``SELECT scopes, sealed FROM suppression_list WHERE kind = %s AND sha256 = %s`` with a
random existing key, one statement per round trip (autocommit, prepared), for
``--seconds``. Prints reads/s and latency percentiles per connection count. It measures
PostgreSQL answering point reads on this machine, not an HTTP API: no request parsing,
no hashing of the identifier, no network hop.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import close_env, load_average, note, open_env, setup_logging, start_stack

QUERY = "SELECT scopes, sealed FROM suppression_list WHERE kind = %s AND sha256 = %s"


def fill(dsn: str, rows: int) -> list[str]:
    now = datetime.now(UTC)
    hashes = [hashlib.sha256(f"person-{i}@example.com".encode()).hexdigest() for i in range(rows)]
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY suppression_list (kind, sha256, sealed, scopes, first_request_id, "
            "last_request_id, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i, digest in enumerate(hashes):
                sealed = "k1." + "A" * 76  # the size of a sealed email address
                copy.write_row(("email", digest, sealed, ["EMAIL_MARKETING"], f"r{i}", f"r{i}", now, now))
        cur.execute("ANALYZE suppression_list")
    return hashes


def reader(dsn: str, keys: list[str], until: float, latencies: list[float], seed: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        while (now := time.perf_counter()) < until:
            conn.execute(QUERY, ("email", rng.choice(keys))).fetchone()
            latencies.append(time.perf_counter() - now)


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * pct / 100)))] if ordered else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", default="1,4")
    args = parser.parse_args(argv)
    setup_logging()
    load_start = load_average()
    env = open_env(start_stack(), "pk", partitions=1)
    try:
        note(f"filling suppression_list with {args.rows:,} entries")
        keys = fill(env.dsn(), args.rows)
        print(f"\nsuppression_list primary-key reads, {args.rows:,} rows, {os.cpu_count()} cores shared")
        print(f"{'connections':>11} {'reads':>10} {'reads/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for connections in (int(c) for c in args.connections.split(",")):
            per_thread: list[list[float]] = [[] for _ in range(connections)]
            until = time.perf_counter() + args.seconds
            threads = [
                threading.Thread(target=reader, args=(env.dsn(), keys, until, per_thread[i], i))
                for i in range(connections)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            all_latencies = [x for lat in per_thread for x in lat]
            print(
                f"{connections:>11} {len(all_latencies):>10,} {len(all_latencies) / args.seconds:>10,.0f} "
                f"{1000 * percentile(all_latencies, 50):>8.3f} {1000 * percentile(all_latencies, 99):>8.3f}"
            )
        print(
            f"(load average before {load_start}, after {load_average()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
        )
    finally:
        close_env(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
