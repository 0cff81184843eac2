"""One request's state and its destinations', read from PostgreSQL (CLI and web share it)."""

from __future__ import annotations

from typing import Any

from services.common.db import connect
from services.common.settings import Settings


def request_status(cfg: Settings, event_id: str) -> dict[str, Any] | None:
    """The request and each destination's state (shared with the web service)."""
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        row = conn.execute(
            "SELECT event_id, state, scopes, source, jurisdiction, requested_at, received_at,"
            " due_at, deadline_rule, confirmed_at, (state <> 'CONFIRMED' AND due_at < now()),"
            " action, effective_scopes"
            " FROM requests WHERE event_id = %s",
            (event_id,),
        ).fetchone()
        if row is None:
            return None
        dests = conn.execute(
            "SELECT destination, status, command_id, issue_count, last_issued_at, acked_at, detail"
            " FROM destination_status WHERE event_id = %s ORDER BY destination",
            (event_id,),
        ).fetchall()
    keys = (
        "event_id",
        "state",
        "scopes",
        "source",
        "jurisdiction",
        "requested_at",
        "received_at",
        "due_at",
        "deadline_rule",
        "confirmed_at",
        "overdue",
        "action",  # OPT_OUT or OPT_IN
        # Where it took effect (newest wins): None before migration 0007 (all its scopes);
        # empty for a superseded request (a newer one of the other action holds).
        "effective_scopes",
    )
    result: dict[str, Any] = dict(zip(keys, row, strict=True))
    result["destinations"] = [
        dict(
            zip(
                (
                    "destination",
                    "status",
                    "command_id",
                    "issue_count",
                    "last_issued_at",
                    "acked_at",
                    "detail",
                ),
                d,
                strict=True,
            )
        )
        for d in dests
    ]
    return result
