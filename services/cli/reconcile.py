"""``optout reconcile --destination NAME``: compare a destination's list with our suppression
state, re-issue what it lacks, report what it has that we never sent (never removed).

Exit codes: 0 nothing missing (or everything missing was re-issued with ``--repair``, the
default: run it again later to see it restored); 1 entries are missing and were not all
re-issued (``--no-repair``, or no value in the suppression list); 2 bad settings or a kind
that cannot be read back; 3 the destination, broker or database failed (transient).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from services.common.errors import ConfigurationError
from services.common.settings import settings

if TYPE_CHECKING:
    from services.reconcile.run import Report


def render(report: Report) -> str:
    d = report.drift
    rows = [
        ("destination", f"{report.destination} ({report.kind})"),
        ("expected (suppressed in our state)", str(d.expected)),
        ("present at the destination", str(d.present)),
        ("missing at the destination", str(report.missing)),
        ("unknown (there, not suppressed here; left there)", str(len(d.unknown))),
        ("unreadable entries returned", str(d.unreadable)),
        ("re-issued as commands", str(report.reissued) if report.repaired else "- (--no-repair)"),
        ("missing with no value to re-send", str(report.unsendable)),
    ]
    if report.source is not None and report.as_of is not None:  # a mail house's export
        rows[1:1] = [
            ("read from the export", f"{report.source} (written {report.as_of:%Y-%m-%d %H:%M:%S} UTC)"),
            ("suppressed after the export (not expected)", str(report.newer_than_export)),
        ]
    what = "address key" if report.source is not None else "email/phone"
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for sha in (m.sha256 for m in d.missing):
        lines.append(f"missing  {what} sha256 {sha}")
    for sha in d.unknown:
        lines.append(f"unknown  {what} sha256 {sha}")
    return "\n".join(lines) + "\n"


def cmd_reconcile(args: argparse.Namespace) -> int:
    import psycopg

    from services.common.db import require_schema
    from services.reconcile.run import reconcile

    cfg = settings()
    require_schema(cfg.dsn())
    try:
        report = reconcile(cfg, args.destination, repair=args.repair)
    except psycopg.errors.UndefinedTable:
        raise ConfigurationError("the database schema is out of date; run 'optout migrate'") from None
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    unrepaired = report.missing - report.reissued
    return 1 if unrepaired > 0 else 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reconcile",
        help="compare a destination's list with the suppression state; re-issue what it lacks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--destination", required=True, metavar="NAME", help="a destination of the destinations file"
    )
    p.add_argument("--json", action="store_true", help="the drift report as JSON (hashes only)")
    p.add_argument(
        "--repair",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-issue missing entries as commands on the destination's topic (default: yes)",
    )
    p.set_defaults(handler=cmd_reconcile)
