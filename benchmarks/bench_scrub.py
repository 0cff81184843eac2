"""``optout scrub`` on a 1,000,000-row file (``make bench-scrub``), with in the same run the
limit: COPY of the same file into a temporary table plus an anti-join in PostgreSQL.

    .venv/bin/python -m benchmarks.bench_scrub [--rows 1000000] [--suppressed 100000]

Fills ``suppression_state`` of a fresh database (COPY) with ``--suppressed`` people
suppressed for EMAIL_MARKETING among the file's, plus as many opted back in, writes a CSV of
``--rows`` people (a name, a raw email in mixed case, a city), then times:

* ours: ``optout scrub --in audience.csv --out clean.csv --scope EMAIL_MARKETING`` as a
  process (start-up included): Python reads the file, normalizes and hashes every email as
  intake does, COPYs (row, subject) into a temporary table, one join, writes the kept rows;
* the same on a file of SHA-256 hashes (no normalization);
* the limit: the file COPied as it is into a temporary table, then ``COPY (SELECT rows
  WHERE NOT EXISTS (suppressed subject = sha256 of lower(trim(email)))) TO STDOUT`` into the
  output file: PostgreSQL doing the whole job (it cannot apply intake's full normalization,
  so it is only a limit for files of plain addresses like this one).

Both must remove the same rows. The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import close_env, load_average, note, open_env, setup_logging, start_stack

TARGET_SECONDS = 30.0

LIMIT_SQL = """
COPY (
  SELECT t.* FROM scrub_limit t
  WHERE NOT EXISTS (
    SELECT 1 FROM suppression_state s
    WHERE s.subject = 'email_sha256:' || encode(sha256(convert_to(lower(btrim(t.email)), 'UTF8')), 'hex')
      AND s.scope = 'EMAIL_MARKETING' AND s.suppressed)
) TO STDOUT (FORMAT csv, HEADER)
"""


def email(i: int) -> str:
    return f"person.{i}@example.com"


def fill(dsn: str, rows: int, suppressed: int) -> None:
    """People 0, 10, 20, ... suppressed (``suppressed`` of them), 5, 15, ... opted back in."""
    now = datetime.now(UTC)
    step = max(1, rows // suppressed)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY suppression_state (subject, scope, suppressed, since, event_id, action, updated_at) "
            "FROM STDIN"
        ) as copy:
            for n, i in enumerate(range(0, rows, step)):
                if n >= suppressed:
                    break
                for person, out in ((i, True), (i + step // 2, False)):
                    digest = hashlib.sha256(email(person).encode()).hexdigest()
                    action = "OPT_OUT" if out else "OPT_IN"
                    copy.write_row(
                        (f"email_sha256:{digest}", "EMAIL_MARKETING", out, now, f"e{person}", action, now)
                    )
        cur.execute("ANALYZE suppression_state")


def write_file(path: Path, rows: int, hashed: bool) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "email_sha256" if hashed else "email", "city"])
        for i in range(rows):
            value = hashlib.sha256(email(i).encode()).hexdigest() if hashed else email(i)
            if not hashed and i % 3 == 0:
                value = value.upper()
            writer.writerow([f"Person {i}", value, "Springfield"])


def run_scrub(env_vars: dict[str, str], source: Path, target: Path) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "scrub",
            "--in",
            str(source),
            "--out",
            str(target),
            "--scope",
            "EMAIL_MARKETING",
            "--json",
            "--no-progress",
        ],
        env=env_vars,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"optout scrub failed: {done.stderr.strip()}")
    report: dict[str, object] = json.loads(done.stdout)
    return elapsed, report


def run_limit(dsn: str, source: Path, target: Path) -> tuple[float, int]:
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE scrub_limit (name text, email text, city text) ON COMMIT DROP")
        with (
            source.open("rb") as handle,
            cur.copy("COPY scrub_limit FROM STDIN (FORMAT csv, HEADER)") as copy,
        ):
            while chunk := handle.read(1 << 20):
                copy.write(chunk)
        with target.open("wb") as out, cur.copy(LIMIT_SQL) as copy:
            for data in copy:
                out.write(data)
    elapsed = time.perf_counter() - started
    with target.open() as handle:
        kept = sum(1 for _ in handle) - 1
    return elapsed, kept


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--suppressed", type=int, default=100_000)
    args = parser.parse_args(argv)
    setup_logging()
    load_start = load_average()
    env = open_env(start_stack(), "scrub", partitions=1)
    try:
        with tempfile.TemporaryDirectory(prefix="optout-bench-scrub-") as folder:
            tmp = Path(folder)
            note(f"filling suppression_state: {args.suppressed:,} suppressed, as many opted back in")
            fill(env.dsn(), args.rows, args.suppressed)
            note(f"writing {args.rows:,}-row files")
            raw, hashed = tmp / "audience.csv", tmp / "audience-sha256.csv"
            write_file(raw, args.rows, hashed=False)
            write_file(hashed, args.rows, hashed=True)
            variables = {
                **os.environ,
                "OPTOUT_DATABASE_URL": env.dsn(),
                "OPTOUT_KAFKA_BOOTSTRAP": env.settings.kafka_bootstrap,
                "OPTOUT_LOG_LEVEL": "warning",
            }
            note("optout scrub, raw emails")
            ours, report = run_scrub(variables, raw, tmp / "clean.csv")
            load_ours = load_average()
            note("optout scrub, SHA-256 column")
            ours_hashed, report_hashed = run_scrub(variables, hashed, tmp / "clean-sha256.csv")
            note("the limit: COPY + anti-join in PostgreSQL")
            limit, limit_kept = run_limit(env.dsn(), raw, tmp / "clean-limit.csv")
            size = raw.stat().st_size / 1e6
        cores = os.cpu_count()
        print(
            f"\noptout scrub, {args.rows:,} rows ({size:.0f} MB), "
            f"{args.suppressed:,} suppressed, {cores} cores"
        )
        print(f"{'':30} {'seconds':>8} {'rows/s':>10} {'removed':>9}  target")
        lines = (
            ("ours, raw emails", ours, report["removed"], f"< {TARGET_SECONDS:.0f} s"),
            ("ours, SHA-256 column", ours_hashed, report_hashed["removed"], ""),
            ("limit: COPY + anti-join (PG)", limit, args.rows - limit_kept, ""),
        )
        for label, seconds, removed, target in lines:
            print(f"{label:30} {seconds:>8.1f} {args.rows / seconds:>10,.0f} {removed:>9,}  {target}")
        if report["removed"] != args.rows - limit_kept or report_hashed["removed"] != report["removed"]:
            print("MISMATCH: ours and the limit removed different counts")
        print(
            f"(load average before {load_start}, after ours {load_ours}, at the end {load_average()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
        )
    finally:
        close_env(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
