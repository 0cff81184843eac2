"""``optout overdue``: requests past their legal due time (or nearing it) and not confirmed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from services.common.clock import SystemClock
from services.common.errors import ConfigurationError
from services.common.settings import settings

if TYPE_CHECKING:
    from services.confirmer.overdue import OverdueRequest


def render_table(rows: Sequence[OverdueRequest], now: datetime) -> str:
    from services.confirmer.overdue import describe_lateness

    lines = [f"{'EVENT ID':38} {'STATE':16} {'RULE':22} {'DUE AT':26} {'LATENESS':18} WAITING ON"]
    for r in rows:
        lines.append(
            f"{r.event_id:38} {r.state:16} {r.deadline_rule:22} "
            f"{r.due_at.isoformat(timespec='seconds'):26} {describe_lateness(r.due_at, now):18} "
            f"{','.join(r.waiting_on) or '-'}"
        )
    return "\n".join(lines) + "\n"


def cmd_overdue(args: argparse.Namespace) -> int:
    import psycopg

    from services.common.db import connect, require_schema
    from services.confirmer.overdue import list_attention_past_retention, list_overdue

    cfg = settings()
    require_schema(cfg.dsn())
    now = SystemClock().now()
    within = timedelta(hours=args.within)
    retention = timedelta(days=cfg.retention_days)
    try:
        with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
            rows = list_overdue(conn, now, within, args.limit)
            stale = list_attention_past_retention(conn, now, retention, args.limit)
    except psycopg.errors.UndefinedColumn:
        raise ConfigurationError("the database schema is out of date; run 'optout migrate'") from None
    if args.json:
        sys.stdout.write(json.dumps([r.as_json(now, retention) for r in rows], indent=2) + "\n")
        return 0
    if not rows:
        scope = f" or due within {args.within:g} h" if args.within else ""
        sys.stdout.write(f"no unconfirmed request is overdue{scope}\n")
    else:
        sys.stdout.write(render_table(rows, now))
        late = sum(1 for r in rows if r.overdue(now))
        sys.stdout.write(
            f"\n{late} overdue, {len(rows) - late} due within {args.within:g} h"
            f"{' (list truncated at --limit)' if len(rows) >= args.limit else ''}\n"
        )
    if stale:
        sys.stdout.write(render_attention_past_retention(stale, now, cfg.retention_days))
    return 0


def render_attention_past_retention(rows: Sequence[OverdueRequest], now: datetime, days: int) -> str:
    """The section of requests that keep raw contact details until someone resolves them."""
    lines = [
        f"\n{len(rows)} request(s) need attention for longer than the retention period ({days} days);"
        " their contact details are kept until resolved (optout resolve EVENT_ID --note TEXT):",
        f"{'EVENT ID':38} {'RECEIVED AT':26} WAITING ON",
    ]
    for r in rows:
        received = r.received_at.isoformat(timespec="seconds") if r.received_at else "-"
        lines.append(f"{r.event_id:38} {received:26} {','.join(r.waiting_on) or '-'}")
    return "\n".join(lines) + "\n"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "overdue",
        help="list unconfirmed requests past their legal due time",
        description="List requests not yet CONFIRMED (nor resolved) whose due time (from "
        "jurisdiction and scopes) has passed, earliest first, with the destinations still "
        "outstanding; then, apart, requests that need attention for longer than the retention "
        "period (OPTOUT_RETENTION_DAYS) until someone resolves them (optout resolve).",
    )
    p.add_argument(
        "--within",
        type=float,
        default=0.0,
        metavar="HOURS",
        help="also list requests due within this many hours",
    )
    p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_overdue)
