"""What the encrypted suppression list costs intake (``python -m benchmarks.bench_suppression``).

(a) sealing alone: ``entries_of`` + AES-256-GCM ``seal`` for realistic requests, per event;
(b) ``record_batch`` on a fresh database, one connection, chunks of 1,000, with the
suppression-list entries and with them left out (the same statement, empty entry arrays),
alternating, so the difference is the database cost of the list.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from unittest import mock

import psycopg

from benchmarks.common import (
    close_env,
    generate_events,
    load_average,
    note,
    open_env,
    setup_logging,
    start_stack,
)
from services.common.settings import Settings
from services.domain.planning import plan_commands
from services.domain.validation import OptOutRequest, validate_request
from services.intake import store
from services.suppression.entries import entries_of, seal, suppression_ring


def _requests(count: int, seed: int) -> list[OptOutRequest]:
    now = datetime.now(UTC)
    return [validate_request(e.record, now, timedelta(minutes=5)) for e in generate_events(count, seed, now)]


def _record(dsn: str, requests: Sequence[OptOutRequest], chunk: int, with_entries: bool) -> float:
    cfg = Settings()
    ring = suppression_ring(cfg)
    now = datetime.now(UTC)
    commands = {r.event_id: plan_commands(r, now, cfg.destinations) for r in requests}
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        with mock.patch.object(store, "entries_of", entries_of if with_entries else (lambda _r: [])):
            for start in range(0, len(requests), chunk):
                store.record_batch(conn, requests[start : start + chunk], commands, now, ring)
        return time.perf_counter() - started


def store_settings():
    from services.common.settings import Settings

    return Settings()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging()
    note(f"load average before: {load_average()}")
    requests = _requests(args.events, seed=11)
    ring = suppression_ring(Settings())
    started = time.perf_counter()
    sealed = [seal(ring, e) for r in requests for e in entries_of(r)]
    seal_seconds = time.perf_counter() - started
    print(
        f"(a) sealing: {len(requests):,} events, {len(sealed):,} entries "
        f"({len(sealed) / len(requests):.2f}/event): {1e6 * seal_seconds / len(requests):.1f} µs per event, "
        f"{1e6 * seal_seconds / max(1, len(sealed)):.1f} µs per entry"
    )
    stack = start_stack()
    env = open_env(stack, "suppression", partitions=1)
    try:
        totals = {True: 0.0, False: 0.0}
        for round_ in range(args.rounds):
            for with_entries in (True, False):
                batch = _requests(args.events, seed=1000 + 2 * round_ + int(with_entries))
                totals[with_entries] += _record(env.dsn(), batch, 1000, with_entries)
        n = args.events * args.rounds
        on, off = totals[True], totals[False]
        print(
            f"(b) record_batch, {n:,} events each way: with the list {n / on:,.0f} events/s, "
            f"without {n / off:,.0f} events/s ({100 * (on - off) / off:+.1f}% time; "
            f"{1e6 * (on - off) / n:.1f} µs per event)"
        )
    finally:
        close_env(env)
    note(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
