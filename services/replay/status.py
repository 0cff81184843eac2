"""``optout replay-status``: what each replay run sent and what its destination acknowledged.

The replayer counts what it sent (``replay_runs.sent``); the confirmer records each command's
ack in ``replay_commands`` when it arrives (services/confirmer/store.py). Sent minus
acknowledged is what the destination has not answered yet; acks flagged ``audit_pending``
came before their command's ``replayed`` audit rows and are written into the audit trail by
the replay's next batch (services/common/audit.py), so an open run that is never resumed
leaves them out of the trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

_RUNS = """
SELECT r.replay_id, r.destination, r.started_at, r.finished_at, r.sent, r.skipped,
       count(c.command_id) FILTER (WHERE c.status IN ('APPLIED', 'ALREADY_SUPPRESSED')),
       count(c.command_id) FILTER (WHERE c.status = 'REJECTED'),
       count(c.command_id) FILTER (WHERE c.audit_pending)
FROM replay_runs AS r
LEFT JOIN replay_commands AS c ON c.replay_id = r.replay_id
WHERE %(destination)s::text IS NULL OR r.destination = %(destination)s::text
GROUP BY r.replay_id
ORDER BY r.started_at DESC, r.replay_id
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class RunStatus:
    replay_id: str
    destination: str
    started_at: datetime
    finished_at: datetime | None
    sent: int
    skipped: int
    applied: int  # acknowledged APPLIED or ALREADY_SUPPRESSED
    rejected: int
    audit_pending: int

    @property
    def awaiting(self) -> int:
        """Sent and not acknowledged yet (never negative: a resumed run re-sends a batch)."""
        return max(0, self.sent - self.applied - self.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "destination": self.destination,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "sent": self.sent,
            "skipped": self.skipped,
            "applied": self.applied,
            "rejected": self.rejected,
            "awaiting_ack": self.awaiting,
            "acks_not_in_audit_trail_yet": self.audit_pending,
        }


def runs(conn: psycopg.Connection[Any], destination: str | None = None, limit: int = 20) -> list[RunStatus]:
    """The newest ``limit`` runs (to ``destination``, or to any), newest first."""
    rows = conn.execute(_RUNS, {"destination": destination, "limit": limit}).fetchall()
    return [RunStatus(str(r[0]), str(r[1]), r[2], r[3], *(int(v) for v in r[4:])) for r in rows]


def lines(statuses: list[RunStatus]) -> list[str]:
    """Pure: the human report, one line per run."""
    if not statuses:
        return ["no replay runs"]
    out = [
        f"{'replay':<36} {'destination':<20} {'started (UTC)':<16} {'state':<8} "
        f"{'sent':>10} {'applied':>10} {'rejected':>9} {'awaiting':>9} {'skipped':>8}"
    ]
    for s in statuses:
        state = "finished" if s.finished_at else "open"
        out.append(
            f"{s.replay_id:<36} {s.destination:<20} {s.started_at:%Y-%m-%d %H:%M} {state:<8} "
            f"{s.sent:>10,} {s.applied:>10,} {s.rejected:>9,} {s.awaiting:>9,} {s.skipped:>8,}"
        )
    pending = sum(s.audit_pending for s in statuses if s.finished_at is None)
    if pending:
        out.append(
            f"{pending:,} acks of open runs are not in the audit trail yet: resume the run "
            "(optout replay --destination NAME) to write them"
        )
    return out
