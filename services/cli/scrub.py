"""``optout scrub``: remove suppressed people from a CSV list (services/suppression/scrub.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from services.common.errors import ConfigurationError
from services.common.settings import settings
from services.domain.identifier_kind import IdentifierKind

BAR_WIDTH = 30
LONG_FILE_BYTES = 1_000_000  # a progress bar for files larger than this


class ProgressBar:
    """One line on stderr, redrawn at most 10 times a second."""

    def __init__(self, enabled: bool, show_eta: bool = False) -> None:
        self.enabled = enabled
        self.show_eta = show_eta
        self.started = time.monotonic()
        self._last = 0.0
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        finished = done >= total
        if not finished and phase == self._phase and now - self._last < 0.1:
            return
        self._last, self._phase = now, phase
        share = min(1.0, done / total) if total else 1.0
        filled = int(share * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        elapsed = now - self.started
        eta = ""
        if self.show_eta and not finished:
            from services.replay.plan import eta_seconds  # the replay's; not for a scrub

            left = eta_seconds(done, total, elapsed)
            eta = f" ETA {left:7.1f}s" if left is not None else " ETA       ?"
        sys.stderr.write(f"\r{phase:8} [{bar}] {share:6.1%} {elapsed:6.1f}s{eta}")
        if finished:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_scrub(args: argparse.Namespace) -> int:
    from services.domain.subjects import BadIdentifier, parse_scope
    from services.suppression.scrub import scrub

    cfg = settings()
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise ConfigurationError(f"--in {source}: no such file")
    if target.resolve() == source.resolve():
        raise ConfigurationError("--out must not be the --in file")
    try:
        scope = parse_scope(args.scope)
    except BadIdentifier:
        raise ConfigurationError(f"--scope {args.scope!r} is not a scope") from None
    if args.progress is None:  # by default: on a terminal, for long files
        show = sys.stderr.isatty() and source.stat().st_size >= LONG_FILE_BYTES
    else:
        show = bool(args.progress)
    report = scrub(
        cfg.dsn(),
        source,
        target,
        column=args.column,
        kind=args.kind,
        scope=scope,
        phone_region=cfg.default_phone_region,
        drop_invalid=args.drop_invalid,
        progress=ProgressBar(show),
    )
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(report.lines()) + f"\nwritten: {target}\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scrub",
        help="remove suppressed people from a CSV list (before it goes to a vendor)",
        description="Copy a CSV file without the rows of suppressed people (the suppression state "
        "in PostgreSQL), and report how many were removed and for which scopes. The identifier "
        "column may hold raw emails or phones (normalized as intake does) or their SHA-256 "
        "(64 hex digits, detected), or customer ids.",
    )
    p.add_argument(
        "--in", dest="input", required=True, metavar="FILE", help="the CSV file (with a header row)"
    )
    p.add_argument("--out", dest="output", required=True, metavar="FILE", help="where to write the kept rows")
    p.add_argument("--column", help="the identifier column (default: email, email_sha256, phone, ...)")
    p.add_argument(
        "--kind",
        choices=[k.value for k in IdentifierKind],
        help="what the column holds (default: from its name; 64-hex values are hashes)",
    )
    p.add_argument("--scope", help="remove people suppressed for this scope (default: for any scope)")
    p.add_argument("--drop-invalid", action="store_true", help="also remove rows whose identifier is invalid")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: on a terminal, for files over 1 MB)",
    )
    p.set_defaults(handler=cmd_scrub)
