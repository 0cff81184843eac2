"""``optout gpc-log``: the applied Global Privacy Control signals (table ``gpc_signals``),
for a regulator: when, whose (a SHA-256, never the id), the request each became and that
request's state and confirmation time."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime, timedelta

from services.common.clock import SystemClock
from services.common.errors import ConfigurationError
from services.common.settings import settings

COLUMNS = (
    "seen_at",
    "subject_kind",
    "subject_sha256",
    "event_id",
    "published",
    "jurisdiction",
    "user_agent_family",
    "request_state",
    "confirmed_at",
)

STATES = "SELECT event_id, state, confirmed_at FROM requests WHERE event_id = ANY(%s)"


def parse_moment(text: str) -> datetime:
    """``2026-01-31`` or an ISO 8601 time; naive means UTC. One clear line when not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def cmd_gpc_log(args: argparse.Namespace) -> int:
    from services.common.db import connect, require_schema
    from services.web.device import subject_sha256
    from services.web.gpclog import list_signals

    cfg = settings()
    require_schema(cfg.dsn())
    now = SystemClock().now()
    since = parse_moment(args.since) if args.since else now - timedelta(days=30)
    until = parse_moment(args.until) if args.until else now + timedelta(seconds=1)
    subject = None
    if args.customer_id:
        subject = subject_sha256("customer", args.customer_id)
    elif args.device_id:
        subject = subject_sha256("device", args.device_id)
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        signals = list(list_signals(conn, since, until, subject))
        states = {
            row[0]: (row[1], row[2])
            for row in conn.execute(STATES, (sorted({s.event_id for s in signals}),)).fetchall()
        }
    rows = []
    for signal in signals:
        state, confirmed_at = states.get(signal.event_id, ("NOT_RECEIVED", None))
        rows.append(
            {
                **signal.as_json(),
                "request_state": state,
                "confirmed_at": confirmed_at.isoformat() if confirmed_at else None,
            }
        )
    if args.format == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        sys.stdout.write(
            f"{'SEEN AT':26} {'KIND':9} {'SUBJECT':14} {'EVENT ID':38} {'PUB':4} {'BROWSER':10} STATE\n"
        )
        for r in rows:
            sys.stdout.write(
                f"{str(r['seen_at'])[:26]:26} {r['subject_kind']:9} {str(r['subject_sha256'])[:12]}.. "
                f"{r['event_id']:38} {'yes' if r['published'] else 'no':4} {r['user_agent_family']:10} "
                f"{r['request_state']}{' ' + str(r['confirmed_at']) if r['confirmed_at'] else ''}\n"
            )
        sys.stdout.write(f"{len(rows)} signal(s) from {since.isoformat()} to {until.isoformat()}\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gpc-log",
        help="list or export the applied Global Privacy Control signals",
        description="Every Sec-GPC signal the web service applied (gpc_signals): when, the device "
        "or customer as a SHA-256 (never the id), the request it became and that request's state. "
        "Kept OPTOUT_GPC_LOG_RETENTION_DAYS (730) days; `optout purge` deletes older rows.",
    )
    p.add_argument("--since", help="from this date or ISO time (default: 30 days ago)")
    p.add_argument("--until", help="up to this date or ISO time, exclusive (default: now)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--customer-id", help="only this customer's signals (matched by its hash)")
    who.add_argument("--device-id", help="only this device id's signals (matched by its hash)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(handler=cmd_gpc_log)
