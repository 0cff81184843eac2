"""``optout resolve EVENT_ID --note TEXT``: a person closes a request that needs attention.

Records ``resolved_at`` and the note (why, e.g. a ticket number; never contact details).
From then on the request leaves ``optout overdue`` and the business gauges, and
``optout purge`` removes its raw contact details once the retention period has passed
since ``resolved_at``, as for a confirmed request.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from services.common.clock import SystemClock
from services.common.errors import ConfigurationError, OptoutError
from services.common.logging import get_logger, redact_text
from services.common.settings import settings

if TYPE_CHECKING:
    import psycopg

log = get_logger(__name__)

MAX_NOTE_LENGTH = 500

_RESOLVE = """
UPDATE requests SET resolved_at = %s, resolution_note = %s
WHERE event_id = %s AND state = 'NEEDS_ATTENTION' AND resolved_at IS NULL
RETURNING resolved_at
"""


class NotResolvable(OptoutError):
    """The request does not exist, does not need attention, or is resolved already."""


def check_note(note: str) -> str:
    """One line of at most 500 characters with no email address or phone number in it."""
    text = " ".join(note.split())
    if not text:
        raise ConfigurationError("--note is empty: say why the request is resolved (e.g. a ticket id)")
    if len(text) > MAX_NOTE_LENGTH:
        raise ConfigurationError(f"--note is longer than {MAX_NOTE_LENGTH} characters")
    if redact_text(text) != text:
        raise ConfigurationError(
            "--note looks like it holds an email address or phone number; notes are kept after "
            "purge, so write a ticket id or a reason, not contact details"
        )
    return text


def resolve(conn: psycopg.Connection[Any], event_id: str, note: str) -> None:
    """Mark ``event_id`` resolved now; raise ``NotResolvable`` with the reason otherwise."""
    with conn.transaction():
        row = conn.execute(_RESOLVE, (SystemClock().now(), note, event_id)).fetchone()
        if row is not None:
            return
        found = conn.execute(
            "SELECT state, resolved_at FROM requests WHERE event_id = %s", (event_id,)
        ).fetchone()
    if found is None:
        raise NotResolvable(f"no request with event id {event_id!r}")
    state, resolved_at = found
    if resolved_at is not None:
        raise NotResolvable(f"{event_id} was already resolved at {resolved_at.isoformat(timespec='seconds')}")
    raise NotResolvable(
        f"{event_id} does not need attention (state {state}); only NEEDS_ATTENTION is resolved"
    )


def cmd_resolve(args: argparse.Namespace) -> int:
    import psycopg

    from services.common.db import connect, require_schema

    cfg = settings()
    note = check_note(args.note)
    require_schema(cfg.dsn())
    try:
        with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
            resolve(conn, args.event_id, note)
    except psycopg.errors.UndefinedColumn:
        raise ConfigurationError("the database schema is out of date; run 'optout migrate'") from None
    log.info("request resolved", event_id=args.event_id)
    sys.stdout.write(
        f"resolved {args.event_id}; its contact details are purged {cfg.retention_days} days from now\n"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resolve",
        help="close a request that needs attention (a person has dealt with it)",
        description="Record that a person has dealt with a request in NEEDS_ATTENTION: when, and "
        "a note saying why (a ticket id or a reason, never contact details). The request leaves "
        "`optout overdue` and the gauges, and `optout purge` removes its contact details once "
        "OPTOUT_RETENTION_DAYS have passed since.",
    )
    p.add_argument("event_id", metavar="EVENT_ID", help="the request's event id")
    p.add_argument("--note", required=True, help="why it is resolved (no email addresses or phone numbers)")
    p.set_defaults(handler=cmd_resolve)
