"""``optout replay`` of 1,000,000 active suppressions (``make bench-replay``), with in the same
run the limit: a bare producer sending the same messages.

    .venv/bin/python -m benchmarks.bench_replay [--suppressions 1000000] [--batch-size 5000]
        [--rounds 1] [--profile N]

Fills a fresh database (COPY) with ``--suppressions`` people suppressed for EMAIL_MARKETING:
a ``suppression_state`` row and a sealed ``suppression_list`` entry each, as intake leaves
them, then ANALYZE as the tables' owner (as autovacuum would). Builds and Avro-encodes the
limit's messages (not timed). Then, ``--rounds`` times:

* the limit: one new producer (the settings of ours) sends the same commands to another
  topic with the same partitions and is flushed once;
* ours: ``Replayer.run()`` to ``email_provider`` (raw emails: every value decrypted), batches
  of ``--batch-size`` subjects: read the state after the cursor and the sealed list entries,
  decrypt, build, produce, write the ``replayed`` audit rows and save the cursor once a batch
  is delivered (a new replay each round: new command ids; ``replay_commands`` rows are the
  confirmer's, written as the acks arrive: no confirmer runs here);
* the limit again.

Ours is compared with the faster of the two limits. Target: ours at >= 50% of the limit's
messages per second. Also printed: the load average around each measurement and the CPU
seconds this process spent on ours and on the limit (the machine is shared), and a check
that the topic holds one command per suppression and round, and ``audit_events``
(``replayed``) one row each. With the local devstack PostgreSQL (same machine), also the CPU
its backends serving the benchmark's database spent during ours (read from /proc: the
database's share of the work, which the limit does not have). ``--profile N``: ours under cProfile, the top
N functions on stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import resource
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    EndOffsets,
    close_env,
    count_rows,
    load_average,
    note,
    open_env,
    setup_logging,
    start_stack,
)
from services.common.avro import default_codec
from services.common.kafka import DeliveryTracker, make_producer
from services.common.sealing import KeyRing
from services.common.settings import Settings
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


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving ``database`` while it runs (polled from
    /proc every 50 ms, by pg_stat_activity's pids; None when the server is not local)."""

    def __init__(self, admin_dsn: str, database: str) -> None:
        self._dsn = admin_dsn
        self._database = database
        self._seen: dict[int, tuple[float, float]] = {}  # pid: (first, last) CPU seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.local = True

    def __enter__(self) -> BackendCpu:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def seconds(self) -> float | None:
        return sum(last - first for first, last in self._seen.values()) if self.local else None

    def _poll(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self._database,),
                ).fetchall()
                for (pid,) in pids:
                    try:
                        with open(f"/proc/{pid}/stat") as stat:
                            fields = stat.read().rsplit(")", 1)[1].split()
                    except OSError:
                        self.local = False
                        return
                    cpu = (int(fields[11]) + int(fields[12])) / tick
                    first = self._seen.get(pid, (0.0, 0.0))[0]
                    self._seen[pid] = (first, cpu)
                self._stop.wait(0.05)


def cpu_seconds() -> float:
    """CPU seconds of this process (every thread)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def bare_producer(cfg: Settings, values: Sequence[tuple[str, bytes]]) -> float:
    """Seconds for one new producer (same settings as ours) to deliver ``values``."""
    limit_topic = cfg.suppress_topic("mail_house")  # same partitions, nobody reads it
    producer = make_producer(cfg)
    started = time.perf_counter()
    tracker = DeliveryTracker(producer)
    for key, value in values:
        tracker.produce(limit_topic, value=value, key=key)
    tracker.wait(300.0)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--suppressions", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1, help="limit, ours, limit: this many times")
    parser.add_argument(
        "--profile",
        metavar="N",
        type=int,
        default=0,
        help="cProfile ours; print the top N functions to stderr",
    )
    args = parser.parse_args(argv)
    setup_logging()
    env = open_env(start_stack(), "replay", partitions=3)
    cfg = env.settings
    try:
        ring = suppression_ring(cfg)
        now = datetime.now(UTC)
        since = now - timedelta(days=1)
        fill(env.dsn(), cfg.admin_dsn(), ring, args.suppressions, since, now)

        note("the limit's messages: the same commands, built and encoded beforehand (not timed)")
        dest = cfg.destinations[DESTINATION]
        codec = default_codec()
        values = []
        for i in range(args.suppressions):
            digest = hashlib.sha256(email(i).encode()).hexdigest()
            row = Suppressed(f"email_sha256:{digest}", ("EMAIL_MARKETING",), since)
            record = replay_command("bench-limit", dest, row, email(i), now)
            assert record is not None
            values.append((record["command_id"], codec.encode("SuppressionCommand", record)))

        # ours, limit before, limit after (s), loads, CPU s: ours, limit, ours' PostgreSQL backends
        rounds: list[tuple[float, float, float, str, float, float, float | None]] = []
        for number in range(1, args.rounds + 1):
            load = [load_average()]
            note(f"round {number}: the limit (a bare producer), then ours (optout replay), then the limit")
            cpu = cpu_seconds()
            before = bare_producer(cfg, values)
            cpu_limit = cpu_seconds() - cpu
            load.append(load_average())
            replayer = Replayer(cfg, DESTINATION, batch_size=args.batch_size)
            with BackendCpu(cfg.admin_dsn(), env.database) as backends:
                if args.profile:
                    profiler = cProfile.Profile()
                    report = profiler.runcall(replayer.run)
                    stats = pstats.Stats(profiler, stream=sys.stderr)
                    stats.sort_stats("tottime").print_stats(args.profile)
                else:
                    report = replayer.run()
            load.append(load_average())
            cpu_ours = cpu_seconds() - cpu - cpu_limit
            if report.sent != args.suppressions:
                print(f"MISMATCH: replay sent {report.sent:,} of {args.suppressions:,}")
            after = bare_producer(cfg, values)
            load.append(load_average())
            rounds.append(
                (report.seconds, before, after, " / ".join(load), cpu_ours, cpu_limit, backends.seconds())
            )
            note(
                f"round {number}: CPU seconds of this process: ours {cpu_ours:.1f}, "
                f"the limit (before) {cpu_limit:.1f}"
            )

        # None missing, none twice: each round's replay produced and recorded every command once.
        expected = args.suppressions * args.rounds
        offsets = EndOffsets(cfg, [cfg.suppress_topic(DESTINATION)])
        produced = offsets.total()
        offsets.close()
        audited = count_rows(env.dsn(), "audit_events")  # one 'replayed' row per command here
        check = "ok" if produced == audited == expected else "MISMATCH"
        print(
            f"\noptout replay, {args.suppressions:,} suppressions, batches of {args.batch_size:,}, "
            f"{os.cpu_count()} cores; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        print(
            f"commands on optout.suppress.{DESTINATION}: {produced:,}, audit rows: {audited:,}, "
            f"expected {expected:,} ({args.rounds} round(s)): {check}"
        )
        print(
            f"{'round':>5} {'ours s':>7} {'ours msgs/s':>12} {'limit msgs/s (before, after)':>30}  share  "
            "load average before / after the limit / after ours / after the limit"
        )
        for number, (ours, before, after, loads, cpu_ours, cpu_limit, cpu_db) in enumerate(rounds, 1):
            ours_rate = args.suppressions / ours
            limit_rate = args.suppressions / min(before, after)  # the faster of the two: conservative
            share = ours_rate / limit_rate
            print(
                f"{number:>5} {ours:>7.1f} {ours_rate:>12,.0f} "
                f"{args.suppressions / before:>14,.0f}, {args.suppressions / after:>13,.0f}  "
                f"{share:>5.0%}  {loads}"
            )
            print(
                f"      target: ours >= {TARGET_SHARE:.0%} of the faster limit: "
                f"{'met' if share >= TARGET_SHARE else 'MISSED'}"
            )
            per = 1e6 / args.suppressions
            db = f"{cpu_db:.1f} s ({cpu_db * per:.1f} µs a message)" if cpu_db is not None else "(not local)"
            print(
                f"      CPU of this process: ours {cpu_ours:.1f} s ({cpu_ours * per:.1f} µs a message), "
                f"the limit {cpu_limit:.1f} s ({cpu_limit * per:.1f} µs); PostgreSQL during ours: {db}"
            )
    finally:
        close_env(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
