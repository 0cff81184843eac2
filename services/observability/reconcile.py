"""The last ``optout reconcile`` report of each destination (table ``reconcile_reports``,
migration 0013), exported by ``optout run exporter``:

- ``optout_reconcile_missing{destination}``: entries suppressed in our state that the
  destination's list lacked at the last run (re-issued unless ``--no-repair``)
- ``optout_reconcile_unknown{destination}``: entries on the destination's list that are not
  suppressed in our state (reported, never removed)
- ``optout_reconcile_unsendable{destination}``: missing entries with no value in the
  suppression list to re-send
- ``optout_reconcile_last_run_timestamp_seconds{destination}``: when it ran
- ``optout_reconcile_source_timestamp_seconds{destination}``: when the snapshot it read was
  written (mail houses: their export; absent for destinations read live)
"""

from __future__ import annotations

from typing import Any

import psycopg
from prometheus_client import Gauge

MISSING = Gauge(
    "optout_reconcile_missing",
    "Entries suppressed in our state that the destination lacked at the last `optout reconcile`.",
    ["destination"],
)
UNKNOWN = Gauge(
    "optout_reconcile_unknown",
    "Entries on the destination's list not suppressed in our state at the last `optout reconcile`.",
    ["destination"],
)
UNSENDABLE = Gauge(
    "optout_reconcile_unsendable",
    "Missing entries the last `optout reconcile` could not re-issue (no value in the suppression list).",
    ["destination"],
)
LAST_RUN = Gauge(
    "optout_reconcile_last_run_timestamp_seconds",
    "When `optout reconcile` last ran for the destination (Unix time).",
    ["destination"],
)

SOURCE_WRITTEN = Gauge(
    "optout_reconcile_source_timestamp_seconds",
    "When the snapshot the last `optout reconcile` read was written (a mail house's export; Unix time).",
    ["destination"],
)


def export(conn: psycopg.Connection[Any]) -> int:
    """Set the gauges from ``reconcile_reports``; the number of destinations exported."""
    rows = conn.execute(
        "SELECT destination, missing, unknown, unsendable, ran_at, source_written_at FROM reconcile_reports"
    ).fetchall()
    for destination, missing, unknown, unsendable, ran_at, written in rows:
        MISSING.labels(destination).set(missing)
        UNKNOWN.labels(destination).set(unknown)
        UNSENDABLE.labels(destination).set(unsendable)
        LAST_RUN.labels(destination).set(ran_at.timestamp())
        if written is not None:
            SOURCE_WRITTEN.labels(destination).set(written.timestamp())
    return len(rows)
