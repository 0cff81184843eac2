"""The business view, from periodic queries of PostgreSQL: are opt-outs flowing, and
which requests are at risk of missing their legal deadline?

Gauges (exported by ``optout run exporter`` only, so no other service reports zeros
it never measured):

- ``optout_requests{state}``: pending, confirmed, needs_attention, resolved (needed
  attention, closed by a person with ``optout resolve``), and overdue (= not confirmed nor
  resolved and past ``due_at``; also counted in pending or needs_attention)
- ``optout_requests_needing_attention_past_retention``: unresolved NEEDS_ATTENTION requests
  received longer ago than the retention period (their raw contact details stay until resolved)
- ``optout_oldest_unconfirmed_request_age_seconds``: now - oldest ``requested_at`` not
  confirmed (resolved requests are closed: they count in none of the "open" gauges)
- ``optout_nearest_deadline_seconds``: ``due_at`` of the most urgent unconfirmed request
  minus now (negative once overdue; +Inf when nothing is open)
- ``optout_open_requests_by_deadline{due_in}``: unconfirmed requests by time left
  (overdue, 1d, 3d, 7d, 14d, 30d, later): the deadline burn-down
- ``optout_destination_commands{destination,status}``: commands by destination and ack status
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import Gauge

STATES = ("pending", "confirmed", "needs_attention", "resolved", "overdue")
# (label, upper bound of time left); "overdue" is below zero, "later" beyond the last.
DEADLINE_BUCKETS: tuple[tuple[str, timedelta], ...] = (
    ("1d", timedelta(days=1)),
    ("3d", timedelta(days=3)),
    ("7d", timedelta(days=7)),
    ("14d", timedelta(days=14)),
    ("30d", timedelta(days=30)),
)
DUE_IN_LABELS = ("overdue", *(label for label, _ in DEADLINE_BUCKETS), "later")
COMMAND_STATUSES = ("pending", "applied", "already_suppressed", "rejected")

REQUESTS = Gauge(
    "optout_requests",
    "Opt-out requests by state (overdue: not confirmed and past due_at, also counted in its own state).",
    ["state"],
)
OLDEST_UNCONFIRMED_AGE = Gauge(
    "optout_oldest_unconfirmed_request_age_seconds",
    "Now minus the requested_at of the oldest request not yet confirmed (0 when none).",
)
NEAREST_DEADLINE = Gauge(
    "optout_nearest_deadline_seconds",
    "due_at of the most urgent unconfirmed request minus now; negative when overdue, +Inf when none.",
)
OPEN_BY_DEADLINE = Gauge(
    "optout_open_requests_by_deadline",
    "Unconfirmed requests by time left until due_at (the deadline burn-down).",
    ["due_in"],
)
DESTINATION_COMMANDS = Gauge(
    "optout_destination_commands",
    "Commands by destination and acknowledgement status.",
    ["destination", "status"],
)
ATTENTION_PAST_RETENTION = Gauge(
    "optout_requests_needing_attention_past_retention",
    "Unresolved NEEDS_ATTENTION requests received longer ago than OPTOUT_RETENTION_DAYS: their raw "
    "contact details are kept until someone runs `optout resolve`.",
)
REFRESHED = Gauge(
    "optout_business_metrics_refreshed_timestamp_seconds",
    "Unix time the business metrics were last read from the database.",
)


@dataclass(frozen=True)
class BusinessSnapshot:
    by_state: dict[str, int]
    overdue: int
    oldest_unconfirmed_requested_at: datetime | None
    nearest_due_at: datetime | None
    open_by_deadline: dict[str, int]
    commands: dict[tuple[str, str], int] = field(default_factory=dict)
    attention_past_retention: int = 0


def deadline_bucket(time_left: timedelta) -> str:
    """The ``due_in`` label of a request with ``time_left`` until its deadline."""
    if time_left < timedelta(0):
        return "overdue"
    for label, bound in DEADLINE_BUCKETS:
        if time_left < bound:
            return label
    return "later"


def gauge_values(snapshot: BusinessSnapshot, now: datetime, destinations: Iterable[str]) -> dict[str, Any]:
    """Every business gauge's value (pure: what ``export`` sets); ``destinations``: the names
    in the destinations file, each reported even with no commands."""
    requests = {state: 0 for state in STATES}
    for state, count in snapshot.by_state.items():
        key = state.lower()
        if key in requests:
            requests[key] = count
    requests["overdue"] = snapshot.overdue
    oldest = snapshot.oldest_unconfirmed_requested_at
    nearest = snapshot.nearest_due_at
    commands = {(d, s): 0 for d in destinations for s in COMMAND_STATUSES}
    for (destination, status), count in snapshot.commands.items():
        commands[(destination, status.lower())] = count
    return {
        "requests": requests,
        "oldest_age": max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        "nearest_deadline": (nearest - now).total_seconds() if nearest else math.inf,
        "open_by_deadline": {label: snapshot.open_by_deadline.get(label, 0) for label in DUE_IN_LABELS},
        "commands": commands,
        "attention_past_retention": snapshot.attention_past_retention,
    }


def export(snapshot: BusinessSnapshot, now: datetime, destinations: Iterable[str]) -> None:
    values = gauge_values(snapshot, now, destinations)
    for state, count in values["requests"].items():
        REQUESTS.labels(state).set(count)
    OLDEST_UNCONFIRMED_AGE.set(values["oldest_age"])
    NEAREST_DEADLINE.set(values["nearest_deadline"])
    for label, count in values["open_by_deadline"].items():
        OPEN_BY_DEADLINE.labels(label).set(count)
    for (destination, status), count in values["commands"].items():
        DESTINATION_COMMANDS.labels(destination, status).set(count)
    ATTENTION_PAST_RETENTION.set(values["attention_past_retention"])
    REFRESHED.set(now.timestamp())


def init_zeros(destinations: Iterable[str]) -> None:
    """Create every business series with a zero value before the first query."""
    for state in STATES:
        REQUESTS.labels(state).set(0)
    for label in DUE_IN_LABELS:
        OPEN_BY_DEADLINE.labels(label).set(0)
    for d in destinations:
        for status in COMMAND_STATUSES:
            DESTINATION_COMMANDS.labels(d, status).set(0)
    OLDEST_UNCONFIRMED_AGE.set(0)
    NEAREST_DEADLINE.set(math.inf)
    ATTENTION_PAST_RETENTION.set(0)


_BUCKET_SQL = (
    "CASE WHEN due_at < %(now)s THEN 'overdue' "
    + " ".join(
        f"WHEN due_at < %(now)s + interval '{bound.days} days' THEN '{label}'"
        for label, bound in DEADLINE_BUCKETS
    )
    + " ELSE 'later' END"
)


# A request is open until confirmed or resolved by a person (``optout resolve``).
_OPEN = "state <> 'CONFIRMED' AND resolved_at IS NULL"


def query_snapshot(conn: psycopg.Connection[Any], now: datetime, retention: timedelta) -> BusinessSnapshot:
    """Read the business view in one read-only transaction. ``retention``: the retention
    period (OPTOUT_RETENTION_DAYS) after which an unresolved NEEDS_ATTENTION request counts
    in ``optout_requests_needing_attention_past_retention``."""
    params = {"now": now, "stale_before": now - retention}
    with conn.transaction():
        by_state = {
            str(s): int(n)
            for s, n in conn.execute(
                "SELECT CASE WHEN resolved_at IS NOT NULL AND state <> 'CONFIRMED' THEN 'RESOLVED'"
                " ELSE state END AS s, count(*) FROM requests GROUP BY s"
            ).fetchall()
        }
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE due_at < %(now)s), min(requested_at), min(due_at),"
            " count(*) FILTER (WHERE state = 'NEEDS_ATTENTION' AND received_at < %(stale_before)s)"
            f" FROM requests WHERE {_OPEN}",
            params,
        ).fetchone()
        buckets = {
            str(b): int(n)
            for b, n in conn.execute(
                f"SELECT {_BUCKET_SQL} AS bucket, count(*) FROM requests WHERE {_OPEN} GROUP BY bucket",
                params,
            ).fetchall()
        }
        commands = {
            (str(d), str(s)): int(n)
            for d, s, n in conn.execute(
                "SELECT destination, status, count(*) FROM destination_status GROUP BY destination, status"
            ).fetchall()
        }
    overdue, oldest, nearest, stale = row if row else (0, None, None, 0)
    return BusinessSnapshot(by_state, int(overdue or 0), oldest, nearest, buckets, commands, int(stale or 0))


def snapshot_from_rows(rows: Iterable[tuple[str, datetime, datetime]], now: datetime) -> BusinessSnapshot:
    """The same snapshot from (state, requested_at, due_at) rows (tests and small tools)."""
    by_state: dict[str, int] = {}
    overdue = 0
    oldest: datetime | None = None
    nearest: datetime | None = None
    buckets: dict[str, int] = {}
    for state, requested_at, due_at in rows:
        by_state[state] = by_state.get(state, 0) + 1
        if state == "CONFIRMED":
            continue
        overdue += due_at < now
        oldest = requested_at if oldest is None else min(oldest, requested_at)
        nearest = due_at if nearest is None else min(nearest, due_at)
        label = deadline_bucket(due_at - now)
        buckets[label] = buckets.get(label, 0) + 1
    return BusinessSnapshot(by_state, overdue, oldest, nearest, buckets)
