"""``python -m services.devstack up|down|status|env``.

up      start (or reuse) the stack; print the addresses and the ``export`` lines
env     same as up, but print only the ``export`` lines:  eval "$(python -m services.devstack env)"
down    stop our broker(s), database server, sshd (and PgBouncer)
status  print what runs where (``--json`` for machine-readable output)
state-dir  print the folder that holds the stack's data and logs (``make clean`` removes it)
prune   delete the topics killed test and benchmark runs left on our broker (``--dry-run``)

OPTOUT_DEVSTACK_BROKERS=3 runs a replicated cluster of three Kafka nodes instead of the single
broker (OPTOUT_DEVSTACK_KAFKA_PORT_BASE moves its ports). OPTOUT_DEVSTACK_PGBOUNCER=1 puts
PgBouncer (transaction pooling, port 16432) between the services and PostgreSQL. A second
stack beside the first: another OPTOUT_STACK_DIR with OPTOUT_DEVSTACK_KAFKA_PORT_BASE,
OPTOUT_DEVSTACK_PG_PORT (default 15432) and OPTOUT_DEVSTACK_SSHD_PORT (default 12222).

Logs go to stderr, results to stdout. On failure: one line on stderr, exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys

import structlog


def _say(line: str) -> None:
    """The CLI's output goes to stdout (logs go to stderr)."""
    sys.stdout.write(f"{line}\n")


def _exports(env: dict[str, str]) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in env.items()]


def _print_status(state: dict[str, object]) -> None:
    _say(f"state dir: {state['state_dir']}")
    for name in ("kafka", "postgres", "sshd", "pgbouncer"):
        part = state[name]
        assert isinstance(part, dict)
        running = "running" if part.get("running") else "stopped"
        pid = f" (pid {part['pid']})" if part.get("pid") else ""
        _say(f"{name}: {running}{pid}")
        for key, value in part.items():
            if key not in ("running", "pid"):
                _say(f"  {key}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.devstack",
        description="Local real Kafka broker + PostgreSQL server for development and tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start or reuse the stack, print addresses and export lines"),
        ("env", "start or reuse the stack, print only shell export lines"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--no-install",
            action="store_true",
            help="fail instead of fetching Kafka jars (mvn) or installing PostgreSQL (apt-get)",
        )
    sub.add_parser("down", help="stop our broker, database server and sshd")
    st = sub.add_parser("status", help="show what runs where")
    st.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("state-dir", help="print the folder that holds the stack's data and logs")
    pr = sub.add_parser(
        "prune",
        help="delete the topics killed test and benchmark runs left on our broker "
        "(run it while no tests or benchmarks run)",
    )
    pr.add_argument("--dry-run", action="store_true", help="only count them")
    args = parser.parse_args(argv)

    # Results go to stdout (so `eval "$(... env)"` works); logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))

    from services.devstack import StackError, down, ensure_up, status

    try:
        if args.command in ("up", "env"):
            info = ensure_up(install=not args.no_install)
            if args.command == "up":
                _say(f"kafka bootstrap:       {info.kafka_bootstrap}")
                _say(f"kafka nodes (ours):    {info.kafka_brokers or '-'}")
                _say(f"kafka SASL bootstrap:  {info.kafka_sasl_bootstrap or '-'}")
                _say(f"database (app):        {info.database_url}")
                _say(f"database (admin):      {info.admin_database_url}")
                _say(f"database (superuser):  {info.superuser_database_url or '-'}")
                _say(f"sftp (mail house):     {f'{info.sftp.host}:{info.sftp.port}' if info.sftp else '-'}")
                _say("")
            _say("\n".join(_exports(info.env())))
        elif args.command == "state-dir":
            from services.devstack.config import Paths

            _say(str(Paths.from_env().state_dir))
        elif args.command == "prune":
            from services.devstack.prune import prune

            pruned = prune(ensure_up(install=False), dry_run=args.dry_run)
            verb = "would delete" if args.dry_run else "deleted"
            _say(
                f"{verb} {pruned.topics} topics ({pruned.partitions} partitions) left by test and "
                f"benchmark runs; {pruned.kept} other topics kept"
            )
        elif args.command == "down":
            down()
            _say("stopped")
        else:
            state = status()
            if args.json:
                _say(json.dumps(state, indent=2, sort_keys=True))
            else:
                _print_status(state)
    except StackError as exc:
        sys.stderr.write(f"devstack {args.command}: {exc}\n")
        return 1
    except BrokenPipeError:  # e.g. `status | head`: the reader went away, nothing to report
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        sys.stderr.write(f"devstack {args.command}: interrupted\n")
        return 130
    except Exception as exc:  # one line, no traceback, by contract
        sys.stderr.write(f"devstack {args.command}: unexpected {type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
