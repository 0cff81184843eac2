"""Requests past (or near) their legal due time and not confirmed: ``optout overdue``.

A request is overdue when ``state <> 'CONFIRMED' AND due_at < now`` and nobody has resolved
it (``optout resolve`` sets ``resolved_at``). ``within`` widens the list to requests due
before ``now + within``. ``now`` is passed in (the injected clock), never read from the
database, so tests can move time.

Requests in NEEDS_ATTENTION received longer ago than the retention period and not resolved
keep raw contact details that ``optout purge`` never removes on its own: they are listed
apart (``list_attention_past_retention``) until someone resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg


@dataclass(frozen=True)
class OverdueRequest:
    event_id: str
    state: str
    jurisdiction: str | None
    deadline_rule: str
    requested_at: datetime
    due_at: datetime
    overdue_at: datetime | None  # when the sweeper first noticed it past due
    waiting_on: tuple[str, ...]  # destinations not applied yet, e.g. "mail_house:PENDING"
    received_at: datetime | None = None

    def overdue(self, now: datetime) -> bool:
        return self.due_at < now

    def attention_past_retention(self, now: datetime, retention: timedelta) -> bool:
        """Needs attention, unresolved, and received longer ago than the retention period."""
        return (
            self.state == "NEEDS_ATTENTION"
            and self.received_at is not None
            and self.received_at < now - retention
        )

    def as_json(self, now: datetime, retention: timedelta | None = None) -> dict[str, Any]:
        past_retention = retention is not None and self.attention_past_retention(now, retention)
        return {
            "event_id": self.event_id,
            "state": self.state,
            "jurisdiction": self.jurisdiction,
            "deadline_rule": self.deadline_rule,
            "requested_at": self.requested_at.isoformat(),
            "due_at": self.due_at.isoformat(),
            "overdue": self.overdue(now),
            "seconds_past_due": int((now - self.due_at).total_seconds()),
            "overdue_since": self.overdue_at.isoformat() if self.overdue_at else None,
            "waiting_on": list(self.waiting_on),
            "attention_past_retention": past_retention,
        }


# The columns of an ``OverdueRequest`` (what each destination still waits on), for the
# requests a WHERE clause picks; the WHERE and ORDER BY come in the two queries below.
_SELECT = """
SELECT r.event_id, r.state, r.jurisdiction, r.deadline_rule, r.requested_at, r.due_at,
       r.overdue_at,
       coalesce(array_agg(d.destination || ':' || d.status ORDER BY d.destination)
                FILTER (WHERE d.status NOT IN ('APPLIED', 'ALREADY_SUPPRESSED')), '{}'),
       r.received_at
FROM requests r LEFT JOIN destination_status d ON d.event_id = r.event_id
"""

_QUERY = (
    _SELECT
    + """WHERE r.state <> 'CONFIRMED' AND r.resolved_at IS NULL AND r.due_at < %s
GROUP BY r.event_id
ORDER BY r.due_at, r.event_id
LIMIT %s
"""
)

_PAST_RETENTION = (
    _SELECT
    + """WHERE r.state = 'NEEDS_ATTENTION' AND r.resolved_at IS NULL AND r.received_at < %s
GROUP BY r.event_id
ORDER BY r.received_at, r.event_id
LIMIT %s
"""
)


def list_overdue(
    conn: psycopg.Connection[Any], now: datetime, within: timedelta = timedelta(0), limit: int = 1000
) -> list[OverdueRequest]:
    """Unconfirmed requests due before ``now + within``, earliest due first."""
    rows = conn.execute(_QUERY, (now + within, limit)).fetchall()
    return [OverdueRequest(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7]), r[8]) for r in rows]


def list_attention_past_retention(
    conn: psycopg.Connection[Any], now: datetime, retention: timedelta, limit: int = 1000
) -> list[OverdueRequest]:
    """Unresolved NEEDS_ATTENTION requests received before ``now - retention``, oldest first."""
    rows = conn.execute(_PAST_RETENTION, (now - retention, limit)).fetchall()
    return [OverdueRequest(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7]), r[8]) for r in rows]


def describe_lateness(due_at: datetime, now: datetime) -> str:
    """``overdue 2d 3h`` or ``due in 5h 10m``: for the table."""
    delta = now - due_at
    late = delta > timedelta(0)
    seconds = int(abs(delta).total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = rest // 60
    if days:
        span = f"{days}d {hours}h"
    elif hours:
        span = f"{hours}h {minutes}m"
    else:
        span = f"{minutes}m"
    return f"overdue {span}" if late else f"due in {span}"
