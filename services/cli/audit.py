"""``optout audit EVENT_ID`` (one request's timeline) and ``optout audit export`` (in bulk)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, time
from typing import TextIO

from services.common.errors import ConfigurationError, OptoutError
from services.common.settings import settings


def parse_day(text: str) -> datetime:
    """A ``YYYY-MM-DD`` date (midnight UTC) or an ISO 8601 timestamp (UTC when naive)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"not a date: {text!r} (expected YYYY-MM-DD or an ISO 8601 timestamp)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    from services.common import audit
    from services.common.db import connect, require_schema

    if args.target == "export":
        return _export(args)
    if args.start or args.end or args.out or args.format:
        raise ConfigurationError("--from, --to, --format and --out go with 'optout audit export'")
    cfg = settings()
    require_schema(cfg.dsn())
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        events = audit.timeline(conn, args.target)
    if not events:
        raise OptoutError(f"no audit events for request {args.target}")
    if args.json:
        sys.stdout.write(json.dumps([audit.as_dict(e) for e in events], indent=2) + "\n")
    else:
        sys.stdout.write(audit.table(events))
    return 0


def _export(args: argparse.Namespace) -> int:
    from services.common import audit
    from services.common.db import connect, require_schema

    if not args.start or not args.end:
        raise ConfigurationError("optout audit export needs --from DATE and --to DATE")
    start, end = parse_day(args.start), parse_day(args.end)
    if end <= start:
        raise ConfigurationError("--to must be after --from (the range is [from, to))")
    fmt = args.format or "jsonl"
    cfg = settings()
    require_schema(cfg.dsn())

    def progress(done: int) -> None:
        sys.stderr.write(f"exported {done:,} audit events\n")

    def write(out: TextIO) -> None:
        if fmt == "csv":
            out.write(audit.csv_header())
        with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
            for event in audit.stream(conn, start, end, progress):
                out.write(audit.csv_line(event) if fmt == "csv" else audit.jsonl_line(event))

    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8", newline="") as out:
                write(out)
        except OSError as exc:
            raise ConfigurationError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    else:
        write(sys.stdout)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="the audit trail: a request's timeline, or an export in bulk",
        description="'optout audit EVENT_ID' shows the request's audit timeline (recorded, "
        "commands sent, acknowledgements, confirmed, purged...). 'optout audit export --from "
        "DATE --to DATE' exports every audit event in [from, to) as CSV or JSON lines. The "
        "trail holds no raw contact details.",
    )
    p.add_argument("target", metavar="EVENT_ID|export", help="a request's event id, or 'export'")
    p.add_argument("--json", action="store_true", help="the timeline as JSON")
    p.add_argument("--from", dest="start", help="export: first day (YYYY-MM-DD, UTC) or timestamp")
    p.add_argument("--to", dest="end", help="export: end, exclusive (YYYY-MM-DD, UTC) or timestamp")
    p.add_argument("--format", choices=("csv", "jsonl"), help="export format (default jsonl)")
    p.add_argument("--out", help="export: write to this file instead of stdout")
    p.set_defaults(handler=cmd_audit)
