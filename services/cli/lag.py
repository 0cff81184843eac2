"""``optout lag``: consumer lag per group and partition, judged the way Burrow does.

Needs no service running: it asks the cluster (any cluster, with ``--bootstrap``) for
committed offsets, end offsets and partition owners, and reads the oldest unconsumed
message's timestamp for the lag in seconds. The sliding window of commits lives in
memory: a one-shot run samples ``--samples`` times, ``--interval`` seconds apart (so
one run reports OK, WARN or STOP from what it saw in those few seconds; STALL needs an
owned offset to stay put for 30 s, i.e. ``--watch``); ``--watch`` keeps sampling and
the window fills up over the refreshes.

It first checks that a broker answers (one metadata request within ``--timeout``), so an
unreachable cluster is reported in ``--timeout`` seconds rather than after every request of
the first sample has timed out in turn (about 3 x 10 s before).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from confluent_kafka import KafkaException

from services.common.errors import RetriableError
from services.common.settings import Settings, settings
from services.observability.group_lag import GroupLagMonitor, GroupReport, GroupSpec, pipeline_groups
from services.observability.lag import DEFAULT_WINDOW

# Seconds each request may take (``--timeout``): half the exporter's 10 s. A broker that is up
# answers a metadata or offsets request well within a second, so 5 s still leaves room for a
# busy cluster, and an operator learns within about 5 s that nothing answers (librdkafka keeps
# retrying a refused connection, so the first check waits the whole timeout).
DEFAULT_TIMEOUT = 5.0

HEADERS = ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG_SECONDS", "STATUS", "OWNER")


def group_specs(cfg: Settings, named: Sequence[str]) -> list[GroupSpec]:
    """The pipeline's groups, or the named ones (with their topics when they are the pipeline's)."""
    pipeline = {spec.group: spec for spec in pipeline_groups(cfg)}
    if not named:
        return list(pipeline.values())
    return [pipeline.get(g, GroupSpec(g)) for g in named]


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(reports: Sequence[GroupReport]) -> str:
    rows: list[tuple[str, ...]] = [HEADERS]
    for report in reports:
        for p in report.partitions:
            rows.append(
                (
                    report.group,
                    p.topic,
                    str(p.partition),
                    "-" if p.committed is None else str(p.committed),
                    str(p.end),
                    str(p.lag),
                    _fmt_seconds(p.lag_seconds),
                    p.status.name,
                    p.owner or "-",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = []
    for report in reports:
        lines.append(
            f"group {report.group}: {report.status.name} (burrow {report.burrow_status.name}; "
            f"state {report.state}, {report.members} member(s), total lag {report.total_lag}, "
            f"max lag {report.max_lag_seconds:.1f}s, {len(report.partitions)} partition(s))"
        )
    lines.append("")
    lines.extend(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    return "\n".join(lines) + "\n"


def render_json(reports: Sequence[GroupReport]) -> str:
    return json.dumps({"groups": [r.to_json() for r in reports]}, sort_keys=False)


def _emit(out: TextIO, reports: Sequence[GroupReport], as_json: bool, watching: bool) -> None:
    if as_json:
        out.write(render_json(reports) + "\n")
    else:
        if watching and out.isatty():
            out.write("\x1b[2J\x1b[H")
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        out.write(f"{stamp}\n{render_table(reports)}")
        if watching:
            out.write("\n")
    out.flush()


def cmd_lag(args: argparse.Namespace) -> int:
    cfg = settings()
    if args.bootstrap:
        cfg = cfg.model_copy(update={"kafka_bootstrap": args.bootstrap})
    specs = group_specs(cfg, args.group or [])
    monitor = GroupLagMonitor(cfg, window=args.window, request_timeout=args.timeout)
    out = sys.stdout
    try:
        _check_reachable(monitor, cfg.kafka_bootstrap, args.timeout)
        if args.watch is not None:
            while True:
                _emit(out, _sample(monitor, specs), args.json, watching=True)
                time.sleep(args.watch)
        reports: list[GroupReport] = []
        for i in range(args.samples):
            if i:
                time.sleep(args.interval)
            reports = _sample(monitor, specs)
        _emit(out, reports, args.json, watching=False)
    finally:
        monitor.close()
    return 0


def _check_reachable(monitor: GroupLagMonitor, bootstrap: str, timeout: float) -> None:
    try:
        monitor.reachable()
    except KafkaException:
        raise RetriableError(f"no Kafka broker answered at {bootstrap} within {timeout:g} s") from None


def _sample(monitor: GroupLagMonitor, specs: Sequence[GroupSpec]) -> list[GroupReport]:
    try:
        return monitor.sample(specs)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args else str(exc)
        raise RetriableError(f"could not read consumer group offsets: {reason}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}") from None
    if not value > 0 or math.isinf(value):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lag",
        help="consumer lag per group and partition, with a Burrow-style status",
        description="Committed offset, end offset, lag in messages and in seconds (age of the "
        "oldest unconsumed message) and a status per partition: OK, WARN (lag growing while "
        "committing), STOP (no commits while lagging), STALL (a live consumer not advancing) or "
        "REWIND (offset went backwards); a group's status is its worst partition's. Without "
        "--group: every group of the pipeline. Needs no service running.",
    )
    p.add_argument(
        "--group",
        action="append",
        metavar="GROUP",
        help="a consumer group (repeatable); default: the pipeline's groups",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: OPTOUT_KAFKA_BOOTSTRAP)")
    p.add_argument("--json", action="store_true", help="JSON output (one document per refresh)")
    p.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        type=_positive_float,
        metavar="SECONDS",
        help="refresh every SECONDS (default 5) until interrupted",
    )
    p.add_argument(
        "--window",
        type=_positive_int,
        default=DEFAULT_WINDOW,
        metavar="N",
        help=f"commits per partition in the sliding window (default {DEFAULT_WINDOW})",
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=3,
        metavar="N",
        help="one-shot run: samples taken before reporting (default 3)",
    )
    p.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="one-shot run: seconds between samples (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds each request to the cluster may take, the first check that a broker "
        f"answers included (default {DEFAULT_TIMEOUT:g}); no answer in time ends the command "
        "with exit code 3",
    )
    p.set_defaults(handler=cmd_lag)
