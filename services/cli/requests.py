"""``optout publish`` and ``optout status``: for upstream teams and operators."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.destinations import DEFAULT_DESTINATIONS_FILE
from services.common.errors import ConfigurationError, PoisonMessage
from services.common.settings import settings

if TYPE_CHECKING:
    from services.publisher.publish import Prepared


def _read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    stream = sys.stdin if path == "-" else Path(path).open(encoding="utf-8")  # noqa: SIM115
    with stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigurationError(f"{path}:{number}: not JSON ({exc.msg})") from None
                if not isinstance(value, dict):
                    raise ConfigurationError(f"{path}:{number}: expected a JSON object")
                yield number, value


def cmd_publish(args: argparse.Namespace) -> int:
    from services.common.kafka import check_broker
    from services.publisher.publish import RequestPublisher

    cfg = settings()
    publisher = RequestPublisher(cfg)
    prepared: list[Prepared] = []
    errors = 0
    if args.file:
        for number, fields in _read_jsonl(args.file):
            try:
                prepared.append(publisher.prepare(fields))
            except (PoisonMessage, ValueError, TypeError) as exc:
                errors += 1
                sys.stderr.write(f"{args.file}:{number}: invalid request: {exc}\n")
    else:
        fields = {
            k: v
            for k, v in {
                "event_id": args.event_id,
                "customer_id": args.customer_id,
                "email": args.email,
                "phone": args.phone,
                "scopes": args.scopes,
                "source": args.source,
                "jurisdiction": args.jurisdiction,
                "requested_at": args.requested_at,
                "action": "OPT_IN" if args.opt_in else args.action,
            }.items()
            if v is not None
        }
        if args.postal_address:
            fields["postal_address"] = json.loads(args.postal_address)
        prepared.append(publisher.prepare(fields))
    if errors and not args.skip_invalid:
        sys.stderr.write(
            f"optout: {errors} invalid request(s); nothing sent (use --skip-invalid to send the valid ones)\n"
        )
        return 2
    check_broker(cfg)
    sent = 0
    chunk = 10_000
    for start in range(0, len(prepared), chunk):
        sent += publisher.publish(prepared[start : start + chunk])
        if len(prepared) > chunk:
            sys.stderr.write(f"sent {sent}/{len(prepared)}\n")
    for item in prepared[:20] if not args.quiet else []:
        sys.stdout.write(
            f"sent event_id={item.record['event_id']} action={item.record['action']} scopes="
            f"{','.join(item.record['scopes'])} -> {cfg.requests_topic}\n"
        )
    if len(prepared) > 20 and not args.quiet:
        sys.stdout.write(f"... and {len(prepared) - 20} more\n")
    sys.stdout.write(
        f"published {sent} request(s) to {cfg.requests_topic}"
        f"{f', skipped {errors} invalid' if errors else ''}\n"
    )
    return 0


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return "-" if value is None else str(value)


def _destinations_table() -> int:
    """``optout status`` without an event id: the destinations of the destinations file."""
    cfg = settings()
    out = sys.stdout
    out.write(f"destinations file: {cfg.destinations_file or DEFAULT_DESTINATIONS_FILE}\n")
    out.write(f"{'DESTINATION':22} {'KIND':18} {'SCOPES':40} {'TOPIC / GROUP':40} CREDENTIALS\n")
    for d in cfg.destinations:
        scopes = ",".join(sorted(s.value for s in d.scopes))
        identifiers = "identifiers: " + ",".join(sorted(i.value for i in d.identifiers))
        credentials = ",".join(sorted(d.credentials)) or "-"
        rows = (
            f"{d.id:22} {d.kind:18} {scopes:40} {cfg.suppress_topic(d.id):40} {credentials}",
            f"{'':22} {'':18} {identifiers:40} {cfg.group('connector.' + d.id)}",
        )
        out.writelines(row.rstrip() + "\n" for row in rows)
    for scope in cfg.destinations.unserved_scopes():
        out.write(f"warning: no destination serves {scope.value}; a request naming it is dead-lettered\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from services.common.request_status import request_status

    if args.event_id is None:
        return _destinations_table()
    status = request_status(settings(), args.event_id)
    if status is None:
        sys.stderr.write(f"optout: no request with event_id {args.event_id!r}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(status, default=_fmt, indent=2) + "\n")
        return 0
    for key, value in status.items():
        if key != "destinations":
            shown = _fmt(value) if not isinstance(value, list) else ",".join(value) or "- (superseded)"
            sys.stdout.write(f"{key:14} {shown}\n")
    sys.stdout.write(f"\n{'DESTINATION':22} {'STATUS':19} {'SENT':>4} {'ACKED AT':26} DETAIL\n")
    for d in status["destinations"]:
        sys.stdout.write(
            f"{d['destination']:22} {d['status']:19} {d['issue_count']:>4} "
            f"{_fmt(d['acked_at']):26} {_fmt(d['detail'])}\n"
        )
    routed = {d["destination"] for d in status["destinations"]}
    for name in settings().destinations.names:
        if name not in routed:  # in the file, but not routed (scopes, identifiers, or added later)
            sys.stdout.write(f"{name:22} {'-':19} {0:>4} {'-':26} not routed\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="publish OptOutRequested events (validated first)",
        description="Publish one request from flags, or many from a JSON-lines file (one object "
        "per line with the OptOutRequested fields). Every request is validated with intake's "
        "rules before anything is sent. An opt-out by default; --opt-in (or --action OPT_IN) "
        "publishes an opt-in: the person opts back in.",
    )
    p.add_argument("--file", "-f", help="JSON-lines file ('-' for stdin)")
    p.add_argument("--event-id", help="idempotency key (default: a new UUID)")
    p.add_argument("--customer-id")
    p.add_argument("--email")
    p.add_argument("--phone")
    p.add_argument("--postal-address", help="JSON object: name, lines, city, region, postal_code, country")
    p.add_argument(
        "--scopes",
        default="ALL",
        help="comma-separated: EMAIL_MARKETING, POSTAL_MARKETING, THIRD_PARTY_SHARING, ALL",
    )
    p.add_argument("--source", default="API")
    p.add_argument("--jurisdiction", help="e.g. US-CA, US, EU")
    p.add_argument("--requested-at", help="ISO-8601 time with zone (default: now)")
    p.add_argument(
        "--action",
        type=str.upper,
        choices=("OPT_OUT", "OPT_IN"),
        help="OPT_OUT (default) or OPT_IN: the person opts back in to --scopes. Per person and "
        "scope the newest --requested-at wins (a tie: the opt-out), so an opt-in older than "
        'the person\'s latest opt-out changes nothing (in a file: the "action" field)',
    )
    p.add_argument("--opt-in", action="store_true", help="the same as --action OPT_IN")
    p.add_argument("--skip-invalid", action="store_true", help="send the valid lines of a file")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary line")
    p.set_defaults(handler=cmd_publish)

    s = sub.add_parser(
        "status",
        help="show a request and each destination's state; without EVENT_ID, the destinations",
    )
    s.add_argument("event_id", nargs="?", help="omit to list the destinations file's destinations")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=cmd_status)
