"""``optout replay`` of 1,000,000 active suppressions (``make bench-replay``), with in the same
run the limit: a bare producer sending the same messages.

    .venv/bin/python -m benchmarks.bench_replay [--suppressions 1000000] [--batch-size 5000]

Fills a fresh database (COPY) with ``--suppressions`` people suppressed for EMAIL_MARKETING:
a ``suppression_state`` row and a sealed ``suppression_list`` entry each, as intake leaves
them. Then times:

* ours: ``Replayer.run()`` to ``email_provider`` (raw emails: every value decrypted), batches
  of ``--batch-size`` subjects: read the state after the cursor, read and decrypt the list
  entries, record ``replay_commands``, encode and produce, wait for every delivery report,
  save the cursor;
* the limit: the same commands, built and Avro-encoded beforehand (not timed), produced by
  one bare producer to another topic with the same partitions and flushed once.

Target: ours at >= 50% of the limit's messages per second. The load average is printed with
the figures (the machine is shared).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import close_env, load_average, note, open_env, setup_logging, start_stack
from services.common.avro import default_codec
from services.common.kafka import DeliveryTracker, make_producer
from services.common.sealing import KeyRing
from services.replay.plan import Suppressed, replay_command
from services.replay.run import Replayer
from services.suppression.entries import Entry, Kind, seal, suppression_ring

TARGET_SHARE = 0.5
DESTINATION = "email_provider"


def email(i: int) -> str:
    return f"person.{i}@example.com"


def fill(dsn: str, admin_dsn: str, ring: KeyRing, count: int, since: datetime, now: datetime) -> None:
    """``count`` people suppressed for EMAIL_MARKETING, as intake leaves them (COPY)."""
    note(f"filling suppression_state and suppression_list: {count:,} people")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY suppression_state (subject, scope, suppressed, since, event_id, action, updated_at)"
            " FROM STDIN"
        ) as state:
            for i in range(count):
                digest = hashlib.sha256(email(i).encode()).hexdigest()
                state.write_row(
                    (f"email_sha256:{digest}", "EMAIL_MARKETING", True, since, f"e{i}", "OPT_OUT", now)
                )
        with cur.copy(
            "COPY suppression_list (kind, sha256, sealed, scopes, first_request_id, last_request_id,"
            " created_at, updated_at) FROM STDIN"
        ) as listed:
            for i in range(count):
                value = email(i)
                digest = hashlib.sha256(value.encode()).hexdigest()
                sealed = seal(ring, Entry(Kind.EMAIL, digest, value))
                listed.write_row(("email", digest, sealed, ["EMAIL_MARKETING"], f"e{i}", f"e{i}", now, now))
    # As autovacuum would after such a load (only the tables' owner may ANALYZE them).
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE suppression_state")
        conn.execute("ANALYZE suppression_list")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--suppressions", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--workers", type=int, default=2, help="sender processes of ours (optout replay --workers)"
    )
    parser.add_argument(
        "--profile",
        metavar="N",
        type=int,
        default=0,
        help="cProfile ours; print the top N functions to stderr",
    )
    args = parser.parse_args(argv)
    setup_logging()
    load_start = load_average()
    env = open_env(start_stack(), "replay", partitions=3)
    cfg = env.settings
    try:
        ring = suppression_ring(cfg)
        now = datetime.now(UTC)
        since = now - timedelta(days=1)
        fill(env.dsn(), cfg.admin_dsn(), ring, args.suppressions, since, now)

        note("ours: optout replay")
        load_before_ours = load_average()
        replayer = Replayer(cfg, DESTINATION, batch_size=args.batch_size, workers=args.workers)
        if args.profile:
            profiler = cProfile.Profile()
            report = profiler.runcall(replayer.run)
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(args.profile)
        else:
            report = replayer.run()
        load_ours = load_average()
        if report.sent != args.suppressions:
            print(f"MISMATCH: replay sent {report.sent:,} of {args.suppressions:,}")

        note("the limit: a bare producer, the same messages encoded beforehand")
        dest = cfg.destinations[DESTINATION]
        codec = default_codec()
        values = []
        for i in range(args.suppressions):
            digest = hashlib.sha256(email(i).encode()).hexdigest()
            row = Suppressed(f"email_sha256:{digest}", ("EMAIL_MARKETING",), since)
            record = replay_command("bench-limit", dest, row, email(i), now)
            assert record is not None
            values.append((record["command_id"], codec.encode("SuppressionCommand", record)))
        limit_topic = cfg.suppress_topic("mail_house")  # same partitions, nobody reads it
        producer = make_producer(cfg)
        started = time.perf_counter()
        tracker = DeliveryTracker(producer)
        for key, value in values:
            tracker.produce(limit_topic, value=value, key=key)
        tracker.wait(300.0)
        limit = time.perf_counter() - started
        load_limit = load_average()

        ours_rate = report.sent / report.seconds
        limit_rate = args.suppressions / limit
        share = ours_rate / limit_rate
        print(
            f"\noptout replay, {args.suppressions:,} suppressions, batches of {args.batch_size:,}, "
            f"{os.cpu_count()} cores"
        )
        print(f"{'':40} {'seconds':>8} {'msgs/s':>10}  target")
        print(
            f"{'ours: optout replay (decrypt+record)':40} {report.seconds:>8.1f} {ours_rate:>10,.0f}  "
            f">= {TARGET_SHARE:.0%} of the limit: {share:.0%} {'met' if share >= TARGET_SHARE else 'MISSED'}"
        )
        print(f"{'limit: bare producer, same messages':40} {limit:>8.1f} {limit_rate:>10,.0f}")
        print(
            f"(load average before {load_start}, before ours {load_before_ours}, after ours {load_ours}, "
            f"after the limit {load_limit}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
        )
    finally:
        close_env(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
