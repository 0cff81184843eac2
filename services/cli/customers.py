"""``optout customers import FILE.csv`` and ``optout customers status``: the customer
directory intake enriches requests from (README, "Customer directory")."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

from services.common.clock import SystemClock
from services.common.errors import ConfigurationError
from services.common.settings import settings
from services.directory.columns import COLUMNS

MAX_ERRORS_SHOWN = 1000


class _Status:
    """A status line on stderr at most every ``every`` seconds (long files)."""

    def __init__(self, every: float = 2.0) -> None:
        self.every = every
        self._last = time.monotonic()

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            sys.stderr.write(text + "\n")
            sys.stderr.flush()


def cmd_import(args: argparse.Namespace) -> int:
    from services.common.db import connect, require_schema
    from services.directory.csv_format import parse_csv
    from services.directory.store import upsert_entries
    from services.suppression.entries import suppression_ring

    cfg = settings()
    ring = suppression_ring(cfg)
    if args.chunk < 1:
        raise ConfigurationError("--chunk must be at least 1")
    path = Path(args.file)
    try:
        size = os.path.getsize(path)
        raw = path.open("rb")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    status = _Status()
    started = time.monotonic()
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:

        def progress(rows: int) -> None:
            share = f" ({raw.tell() * 100 // size}%)" if size else ""
            status(f"read {rows:,} rows{share}")

        try:
            parsed = parse_csv(handle, cfg.default_phone_region, progress, progress_every=10_000)
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{path} is not UTF-8 text ({exc.reason})") from None
    for error in parsed.errors[:MAX_ERRORS_SHOWN]:
        sys.stderr.write(f"{path}: {error}\n")
    if len(parsed.errors) > MAX_ERRORS_SHOWN:
        sys.stderr.write(f"{path}: ... and {len(parsed.errors) - MAX_ERRORS_SHOWN:,} more bad rows\n")
    entries = parsed.entries
    if not args.dry_run and entries:
        require_schema(cfg.dsn())
        now = SystemClock().now()
        with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
            for start in range(0, len(entries), args.chunk):
                upsert_entries(conn, ring, entries[start : start + args.chunk], now)
                done = min(start + args.chunk, len(entries))
                status(f"stored {done:,} of {len(entries):,} customers")
    emails = sum(len(e.emails) for e in entries)
    phones = sum(len(e.phones) for e in entries)
    addresses = sum(len(e.postal_addresses) for e in entries)
    verb = "would import" if args.dry_run else "imported"
    sys.stdout.write(
        f"{verb} {len(entries):,} customer(s) ({emails:,} emails, {phones:,} phones, "
        f"{addresses:,} postal addresses) from {parsed.rows:,} row(s) in {time.monotonic() - started:.1f} s; "
        f"{len(parsed.errors):,} bad row(s), {parsed.skipped_customers:,} customer(s) left as they were\n"
    )
    return 1 if parsed.errors else 0


def cmd_status(_args: argparse.Namespace) -> int:
    from services.common.db import connect, require_schema
    from services.directory.store import counts

    cfg = settings()
    require_schema(cfg.dsn())
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        customers, identifiers = counts(conn)
    sys.stdout.write(f"customers: {customers:,} ({identifiers:,} emails, phones and postal addresses)\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "customers",
        help="the customer directory: import a CSV file, status",
        description="The customer directory intake enriches requests from: a customer id or any "
        "known identifier maps to the customer's other emails, phones and postal addresses. "
        "Stored encrypted (OPTOUT_SUPPRESSION_KEYS), looked up by SHA-256 hashes.",
    )
    csub = p.add_subparsers(dest="customers_command", metavar="SUBCOMMAND", required=True)
    imp = csub.add_parser(
        "import",
        help="import (insert or replace) customers from a CSV file",
        description=f"Columns (header row, any order; only customer_id required): {', '.join(COLUMNS)}. "
        "Several rows per customer are allowed (one per email, phone or address). Each customer "
        "in the file replaces what was stored for it; customers not in the file are kept. A bad "
        "row is reported with its line number and its customer is left as it was. Exit status 1 "
        "when any row was bad.",
    )
    imp.add_argument("file", metavar="FILE.csv", help="UTF-8 CSV file")
    imp.add_argument("--dry-run", action="store_true", help="check the file, store nothing")
    imp.add_argument("--chunk", type=int, default=1000, help="customers per transaction (default 1000)")
    imp.set_defaults(handler=cmd_import)
    st = csub.add_parser("status", help="how many customers and identifiers are stored")
    st.set_defaults(handler=cmd_status)
