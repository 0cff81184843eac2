"""``optout replay``: send every active suppression to one (new or restored) destination."""

from __future__ import annotations

import argparse
import json
import sys

from services.cli.gpclog import parse_moment
from services.cli.scrub import ProgressBar
from services.common.errors import ConfigurationError
from services.common.settings import settings


def cmd_replay(args: argparse.Namespace) -> int:
    from services.common.db import connect, require_schema
    from services.replay.run import Replayer

    cfg = settings()
    if args.rate is not None and args.rate <= 0:
        raise ConfigurationError("--rate must be a positive number of messages per second")
    show = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    bar = ProgressBar(show and not args.dry_run, show_eta=True)
    replayer = Replayer(
        cfg,
        args.destination,
        since=parse_moment(args.since) if args.since else None,
        rate=args.rate,
        batch_size=args.batch_size,
        progress=lambda done, total: bar("replay", done, total),
        stop_after=args.stop_after,
    )
    require_schema(cfg.dsn())
    with connect(cfg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('public.replay_runs')").fetchone()
    if not row or row[0] is None:
        raise ConfigurationError(
            "the database lacks the replay tables (migration 0012); run 'optout migrate'"
        )
    report = replayer.dry_run() if args.dry_run else replayer.run()
    if args.json:
        body = {
            "replay_id": report.replay_id,
            "destination": report.destination,
            "resumed": report.resumed,
            "subjects": report.total,
            "sent": report.sent,
            "skipped": report.skipped,
            "seconds": round(report.seconds, 3),
            "dry_run": report.dry_run,
            "finished": not report.stopped and not report.dry_run,
        }
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0


def cmd_replay_status(args: argparse.Namespace) -> int:
    from services.common.db import connect, require_schema
    from services.replay import status

    cfg = settings()
    if args.limit < 1:
        raise ConfigurationError("--limit must be 1 or more")
    require_schema(cfg.dsn())
    with connect(cfg.dsn(), autocommit=True) as conn:
        found = status.runs(conn, args.destination, args.limit)
    if args.json:
        sys.stdout.write(json.dumps([s.as_dict() for s in found], indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(status.lines(found)) + "\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="send every active suppression to a new or restored destination",
        description="Send one SuppressionCommand per person suppressed for a scope the destination "
        "serves (the suppression state), with the identifiers it takes (decrypted from the "
        "suppression list), to optout.suppress.<destination>. The connector applies them and "
        "acknowledges; nobody is confirmed again. A killed run resumes where it stopped when "
        "started again (same command ids: nothing is applied twice).",
    )
    p.add_argument(
        "--destination", required=True, metavar="NAME", help="a destination of the destinations file"
    )
    p.add_argument("--since", metavar="DATE", help="only suppressions since then (YYYY-MM-DD or ISO 8601)")
    p.add_argument(
        "--rate", type=float, metavar="N", help="at most N messages per second (default: no limit)"
    )
    p.add_argument("--batch-size", type=int, default=2000, metavar="N", help="subjects per durable batch")
    p.add_argument("--dry-run", action="store_true", help="count only: send nothing, record nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar with an ETA on stderr (default: on a terminal)",
    )
    p.add_argument("--stop-after", type=int, metavar="BATCHES", help=argparse.SUPPRESS)  # tests
    p.set_defaults(handler=cmd_replay)

    q = sub.add_parser(
        "replay-status",
        help="what each replay run sent and what its destination acknowledged",
        description="The newest replay runs, newest first: commands sent, acknowledged as applied "
        "(or already suppressed), rejected, still awaiting an ack, and subjects skipped (no "
        "identifier the destination takes). Acks that came before their command's audit rows "
        "are written into the audit trail by the run's next batch: resume an open run.",
    )
    q.add_argument("--destination", metavar="NAME", help="only runs to this destination")
    q.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    q.add_argument("--json", action="store_true", help="print the runs as a JSON list")
    q.set_defaults(handler=cmd_replay_status)
