"""``optout``: one command for operators, upstream teams and SREs.

Every subcommand fails with one clear line on stderr and a non-zero exit, never a
traceback, when a setting is wrong or the broker or database is unreachable.

Start-up: a process imports only what its command needs. The command modules below hold
argument definitions and light imports (settings, errors, the standard library) at their top;
each handler imports its implementation when it runs (README, "Process start-up";
tests/unit/test_startup_imports.py fails when a heavy import comes back to a top level).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from services.cli import (
    admin,
    audit,
    config,
    customers,
    gpclog,
    lag,
    link,
    overdue,
    purge,
    reconcile,
    replay,
    requests,
    resolve,
    runner,
    scrub,
    state,
    suppression,
)
from services.common.errors import ConfigurationError, OptoutError, PoisonMessage, RetriableError
from services.common.logging import configure_logging
from services.common.settings import settings
from services.connectors.registry import check_destinations

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optout",
        description="Carry opt-out requests from intake to every destination and confirm them.",
        epilog="Settings come from OPTOUT_* environment variables (see README / .env.example).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    runner.add_commands(sub)
    admin.add_commands(sub)
    requests.add_commands(sub)
    lag.add_commands(sub)
    config.add_commands(sub)
    purge.add_commands(sub)
    overdue.add_commands(sub)
    resolve.add_commands(sub)
    link.add_commands(sub)
    suppression.add_commands(sub)
    gpclog.add_commands(sub)
    customers.add_commands(sub)
    scrub.add_commands(sub)
    state.add_commands(sub)
    reconcile.add_commands(sub)
    replay.add_commands(sub)
    audit.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        cfg = settings()
        configure_logging(cfg.log_level, cfg.log_format)
        check_destinations(cfg)
        return handler(args)
    except ConfigurationError as exc:
        for line in str(exc).splitlines():  # the destinations file: one line per problem
            sys.stderr.write(f"optout: {line}\n")
        return 2
    except PoisonMessage as exc:
        sys.stderr.write(f"optout: invalid request: {exc}\n")
        return 2
    except RetriableError as exc:
        sys.stderr.write(f"optout: {exc} (transient; try again)\n")
        return 3
    except OptoutError as exc:
        sys.stderr.write(f"optout: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
