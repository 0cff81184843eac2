"""Requests past (or near) their legal due time and not confirmed: ``optout overdue``.

A request is overdue when ``state <> 'CONFIRMED' AND due_at < now``. ``within`` widens
the list to requests due before ``now + within``. ``now`` is passed in (the injected
clock), never read from the database, so tests can move time.
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

    def overdue(self, now: datetime) -> bool:
        return self.due_at < now

    def as_json(self, now: datetime) -> dict[str, Any]:
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
        }


_QUERY = """
SELECT r.event_id, r.state, r.jurisdiction, r.deadline_rule, r.requested_at, r.due_at,
       r.overdue_at,
       coalesce(array_agg(d.destination || ':' || d.status ORDER BY d.destination)
                FILTER (WHERE d.status NOT IN ('APPLIED', 'ALREADY_SUPPRESSED')), '{}')
FROM requests r LEFT JOIN destination_status d ON d.event_id = r.event_id
WHERE r.state <> 'CONFIRMED' AND r.due_at < %s
GROUP BY r.event_id
ORDER BY r.due_at, r.event_id
LIMIT %s
"""


def list_overdue(
    conn: psycopg.Connection[Any], now: datetime, within: timedelta = timedelta(0), limit: int = 1000
) -> list[OverdueRequest]:
    """Unconfirmed requests due before ``now + within``, earliest due first."""
    rows = conn.execute(_QUERY, (now + within, limit)).fetchall()
    return [OverdueRequest(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7])) for r in rows]


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
