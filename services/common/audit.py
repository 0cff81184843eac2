"""The audit trail (issue #13, proof of compliance): an append-only history per request.

Each step that changes a request appends rows to ``audit_events`` (migration 0014) in the
SAME transaction as the change, with ONE multi-row ``INSERT ... SELECT FROM unnest`` per
batch (``append``), so intake's throughput barely changes. Rows hold no raw contact
details: the event id, the step, the destination, a status and a detail (a command id, an
issue count, or the provider's detail with emails and phones redacted by
``redact_text``).

Steps, in the order a request usually goes through them:

* ``recorded`` (intake; status: the action), ``enriched`` (intake: the customer directory
  added identifiers; detail: how many), ``command_sent`` (intake; detail: the command id),
  ``opted_in`` / ``superseded`` (intake's newest-wins decision: an opt-in took effect, or the
  request took effect for no scope);
* ``command_resent`` (intake on a redelivery, the confirmer's sweeper; detail: issue count);
* ``acknowledged`` (confirmer; status: the ack's, detail: the provider's, redacted),
  ``confirmed`` / ``needs_attention`` (confirmer);
* ``purged`` (``optout purge``: contact details removed), ``erased`` (``optout erase``);
* ``reconcile_resent`` (``optout reconcile`` re-sent the suppression to a destination that
  lacked it) and ``replayed`` (``optout replay``), written into the trail of the request(s)
  whose suppression the command carries (``record_reissued``), and their ``acknowledged``
  rows (the confirmer, ``record_reissue_acks``; detail ``reconcile command <id>: ...``), or,
  for an ack that came before its command's row, the replay or the reconcile
  (``replay_acks_catch_up``, ``record_applied_reissue_acks``: whichever comes second writes it).

``optout purge`` deletes rows older than ``OPTOUT_AUDIT_RETENTION_DAYS`` (730 days: CCPA
regulations section 7101), independently of the contact-details purge. The rows are
append-only for the application role (no UPDATE, DELETE, TRUNCATE): the purge goes through the
SECURITY DEFINER function ``purge_audit_events`` (migration 0015), which refuses a retention
below ``audit_retention_floor`` (730 days).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql

from services.common.arrays import text_array
from services.common.db import advisory_key, advisory_keys
from services.common.errors import ConfigurationError
from services.common.logging import redact_text

MAX_DETAIL = 500
DEFAULT_RETENTION_FLOOR_DAYS = 730  # migration 0015's floor (CCPA regulations section 7101)


class Step(StrEnum):
    RECORDED = "recorded"
    ENRICHED = "enriched"
    COMMAND_SENT = "command_sent"
    COMMAND_RESENT = "command_resent"
    OPTED_IN = "opted_in"
    SUPERSEDED = "superseded"
    ACKNOWLEDGED = "acknowledged"
    CONFIRMED = "confirmed"
    NEEDS_ATTENTION = "needs_attention"
    PURGED = "purged"
    ERASED = "erased"
    RECONCILE_RESENT = "reconcile_resent"
    REPLAYED = "replayed"


class Reissue(StrEnum):
    """Commands sent without a request of their own, written into the trail of the requests
    whose suppression they carry (``record_reissued``)."""

    RECONCILE = "reconcile"  # optout reconcile re-sent what the destination lacked
    REPLAY = "replay"  # optout replay sent the suppressions to a new or restored destination


_REISSUE_STEP = {Reissue.RECONCILE: Step.RECONCILE_RESENT, Reissue.REPLAY: Step.REPLAYED}


@dataclass(frozen=True)
class AuditEvent:
    event_id: str
    at: datetime
    step: str
    destination: str | None = None
    status: str | None = None
    detail: str | None = None
    id: int = 0  # assigned by the database


def safe_detail(detail: str | None) -> str | None:
    """A detail fit for the audit trail: one line, emails and phones redacted, bounded."""
    if detail is None:
        return None
    return redact_text(" ".join(detail.split()))[:MAX_DETAIL]


_APPEND = """
INSERT INTO audit_events (event_id, at, step, destination, status, detail)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[])
"""


def append(cur: psycopg.Cursor[Any] | psycopg.Connection[Any], events: Sequence[AuditEvent]) -> None:
    """Append ``events`` with one statement, inside the caller's transaction. A detail
    that comes from outside (a provider's) must be passed through ``safe_detail`` first."""
    if not events:
        return
    cur.execute(
        _APPEND,
        (  # array literals: one string per column (services/common/arrays.py)
            text_array([e.event_id for e in events]),
            text_array([e.at.isoformat() for e in events]),
            text_array([e.step for e in events]),
            text_array([e.destination for e in events]),
            text_array([e.status for e in events]),
            text_array([e.detail for e in events]),
        ),
    )


# One statement per batch: the winning requests of each command's subject (for the scopes the
# destination serves) get a row carrying the command id (migration 0015), which the confirmer
# finds the command's acks' trails by.
_REISSUED = """
INSERT INTO audit_events (event_id, at, step, destination, detail, command_id)
SELECT DISTINCT s.event_id, %(at)s::timestamptz, %(step)s, %(destination)s,
       %(detail)s || u.command_id, u.command_id
FROM unnest(%(commands)s::text[], %(subjects)s::text[]) AS u(command_id, subject)
JOIN suppression_state s ON s.subject = u.subject AND s.suppressed AND s.scope = ANY(%(scopes)s)
"""


def record_reissued(
    cur: psycopg.Cursor[Any] | psycopg.Connection[Any],
    kind: Reissue,
    destination: str,
    scopes: Sequence[str],
    sent: Sequence[tuple[str, str]],
    at: datetime,
    label: str,
) -> None:
    """Write ``sent`` ((command id, suppression_state subject) of commands delivered to
    ``destination``) into the trail of each request suppressing the subject for one of
    ``scopes``: step ``reconcile_resent`` or ``replayed``, detail ``<label>: command <id>``.
    One statement, inside the caller's transaction (or autocommitted)."""
    if not sent:
        return
    cur.execute(
        _REISSUED,
        {
            "commands": [c for c, _ in sent],
            "subjects": [s for _, s in sent],
            "scopes": list(scopes),
            "destination": destination,
            "kind": kind.value,
            "at": at,
            "step": _REISSUE_STEP[kind].value,
            "detail": f"{label}: command ",
        },
    )


# ``optout replay``'s commands of one batch as COPY text rows (``REPLAYED_COPY``): the replay's
# reader has each subject's requests (the event ids of its suppression_state rows for the
# destination's scopes, read with the batch, already escaped for COPY by the reading query)
# and the replay computed each command id, so PostgreSQL re-reads nothing; COPY inserts them
# in multi-row batches (7.3 against 11.1 µs of backend CPU a row for the INSERT ... SELECT over
# suppression_state it replaces, measured on 200,000 rows, 2026-12-01 23:28 UTC).
REPLAYED_COPY = "COPY audit_events (event_id, at, step, destination, detail, command_id) FROM STDIN"


def copy_text(value: str) -> str:
    """``value`` escaped for COPY's text format (backslash, newline, carriage return, tab)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def replayed_rows(
    destination: str,
    commands: Sequence[str],
    events: Sequence[Sequence[str]],
    at: datetime,
    label: str,
) -> bytes:
    """The ``replayed`` rows of ``commands`` (ids of commands delivered to ``destination``),
    one per request of ``events`` (the COPY-escaped event ids each command carries), detail
    ``<label>: command <id>`` as ``record_reissued`` writes it, as COPY text for
    ``REPLAYED_COPY``. A command id is a UUID (nothing to escape)."""
    middle = (
        f"\t{at.isoformat()}\t{Step.REPLAYED.value}\t{copy_text(destination)}\t{copy_text(label)}: command "
    )
    return "".join(
        [
            f"{event}{middle}{command}\t{command}\n"
            for command, requests in zip(commands, events, strict=True)
            for event in requests
        ]
    ).encode()


# Acks that beat their command's audit row. ``optout replay`` writes a batch's ``replayed``
# rows once its delivery reports are in, ``optout reconcile`` its ``reconcile_resent`` rows
# once its commands are delivered: a connector can apply a command and the confirmer record its
# ack before that, and the ack's join (``_REISSUE_ACKS``) then finds no row. So whichever of
# the two writers comes second writes the ``acknowledged`` row, under one transaction-level
# advisory lock per destination (``reissue_lock_key``; one open replay per destination):
#
# * the confirmer takes it SHARED (confirmers do not wait for each other) before it records a
#   replay ack (``replay_commands``, services/confirmer/store.py) and before ``_REISSUE_ACKS``,
#   and holds it to its commit;
# * the replayer (``replay_acks_catch_up``) and the reconcile (``record_applied_reissue_acks``),
#   after their rows are committed, take it EXCLUSIVE in a READ COMMITTED transaction and, in a
#   later statement (a snapshot taken after the lock is granted), write the ``acknowledged``
#   rows of the acks already recorded.
#
# The two lock holdings are ordered. Confirmer first: it committed the ack (``replay_commands``
# row, or the connector's ``connector_applied`` row, committed before the ack was even
# produced) before the writer's statement started, which therefore sees it. Writer first: its
# rows were committed before it took the lock, so the confirmer's join sees them. Either way
# the row is written; both sides skip an ack already in the trail (the NOT EXISTS below).
REISSUE_LOCK_NAMESPACE = "reissue-audit"

_SHARED_LOCKS = "SELECT count(pg_advisory_xact_lock_shared(k)) FROM unnest(%s::bigint[]) AS k"


def reissue_lock_key(destination: str) -> int:
    """Pure: the advisory-lock key serializing the audit rows of ``destination``'s re-issued
    commands with their acks (namespace ``reissue-audit``: no other lock uses it)."""
    return advisory_key(REISSUE_LOCK_NAMESPACE, destination)


def lock_reissue_acks(
    cur: psycopg.Cursor[Any] | psycopg.Connection[Any], destinations: Iterable[str]
) -> None:
    """The confirmer's side: the shared locks of ``destinations`` (sorted: no deadlock), held
    until the caller's transaction ends."""
    keys = advisory_keys(REISSUE_LOCK_NAMESPACE, destinations)
    if keys:
        cur.execute(_SHARED_LOCKS, (keys,))


# Acks of those commands: written into the same trails when they change the command's status
# there (the first ack, or a success after a refusal), like the confirmer's own acks.
_REISSUE_ACKS = """
WITH t AS (
    SELECT * FROM unnest(%(commands)s::text[], %(destinations)s::text[], %(statuses)s::text[],
                         %(details)s::text[]) AS t(command_id, destination, status, detail)
)
INSERT INTO audit_events (event_id, at, step, destination, status, detail, command_id)
SELECT DISTINCT ON (sent.event_id, t.command_id)
       sent.event_id, %(at)s::timestamptz, 'acknowledged', t.destination, t.status,
       CASE sent.step WHEN 'replayed' THEN 'replay' ELSE 'reconcile' END
           || ' command ' || t.command_id || coalesce(': ' || t.detail, ''),
       t.command_id
FROM t
JOIN audit_events sent ON sent.command_id = t.command_id AND sent.destination = t.destination
     AND sent.step IN ('reconcile_resent', 'replayed')
WHERE NOT EXISTS (
    SELECT 1 FROM audit_events done
    WHERE done.command_id = t.command_id AND done.event_id = sent.event_id
      AND done.step = 'acknowledged' AND (done.status <> 'REJECTED' OR t.status = 'REJECTED')
)
ORDER BY sent.event_id, t.command_id
"""


def record_reissue_acks(
    cur: psycopg.Cursor[Any] | psycopg.Connection[Any],
    acks: Sequence[tuple[str, str, str, str | None]],
    at: datetime,
) -> None:
    """Acks ((command id, destination, status, provider detail), in message order) of
    reconcile and replay commands: one statement (after the destinations' shared locks,
    held to the end of the caller's transaction); acks of other commands match nothing."""
    final: dict[str, tuple[str, str, str | None]] = {}
    for command_id, destination, status, detail in acks:
        previous = final.get(command_id)
        if previous is None or previous[1] == "REJECTED":
            final[command_id] = (destination, status, detail)  # the last success, or refusal
    if not final:
        return
    lock_reissue_acks(cur, {d for d, _, _ in final.values()})
    cur.execute(
        _REISSUE_ACKS,
        {
            "commands": list(final),
            "destinations": [d for d, _, _ in final.values()],
            "statuses": [s for _, s, _ in final.values()],
            "details": [safe_detail(d) for _, _, d in final.values()],
            "at": at,
        },
    )


# The replayer's side, after a batch's ``replayed`` rows are committed: the acks of its run
# that the confirmer recorded before any ``replayed`` row of their command was visible
# (``replay_commands.audit_pending``, migration 0020; a partial index of those rows only, so
# this costs nothing per command) get their ``acknowledged`` rows as the confirmer would
# have written them (status and detail as ``replay_commands`` keeps them: the confirmer
# stores the detail through ``safe_detail``), and lose the flag once their command has its
# ``replayed`` rows (a command of a later batch keeps it). Runs in its own READ COMMITTED
# transaction, after the exclusive lock (a separate statement: its snapshot is taken once
# the lock is granted). Only the last recorded ack of such a command is written (an earlier
# refusal it replaced is not).
_REPLAY_ACKS_CATCH_UP = sql.SQL("""
WITH pending AS (
    SELECT command_id, destination, status, detail FROM replay_commands
    WHERE replay_id = {replay_id} AND audit_pending
), sent AS (
    SELECT DISTINCT ON (s.event_id, p.command_id) s.event_id, p.command_id, p.destination,
           p.status, p.detail
    FROM pending p
    JOIN audit_events s ON s.command_id = p.command_id AND s.destination = p.destination
         AND s.step = 'replayed'
    ORDER BY s.event_id, p.command_id
), written AS (
    INSERT INTO audit_events (event_id, at, step, destination, status, detail, command_id)
    SELECT sent.event_id, {at}::timestamptz, 'acknowledged', sent.destination, sent.status,
           'replay command ' || sent.command_id || coalesce(': ' || sent.detail, ''), sent.command_id
    FROM sent
    WHERE NOT EXISTS (
        SELECT 1 FROM audit_events done
        WHERE done.command_id = sent.command_id AND done.event_id = sent.event_id
          AND done.step = 'acknowledged' AND (done.status <> 'REJECTED' OR sent.status = 'REJECTED')
    )
)
UPDATE replay_commands r SET audit_pending = false
WHERE r.command_id IN (SELECT command_id FROM sent)
""")


def replay_acks_catch_up(replay_id: str, destination: str, at: datetime) -> sql.Composed:
    """The transaction writing the ``acknowledged`` rows of replay ``replay_id``'s acks that
    came before their ``replayed`` rows (see ``_REPLAY_ACKS_CATCH_UP``), its values inlined
    (the replay sends it after the batch's ``replayed`` rows, in the same round trip)."""
    return sql.SQL(";\n").join(
        [
            sql.SQL("BEGIN ISOLATION LEVEL READ COMMITTED"),
            sql.SQL("SELECT pg_advisory_xact_lock({})").format(sql.Literal(reissue_lock_key(destination))),
            _REPLAY_ACKS_CATCH_UP.format(replay_id=sql.Literal(replay_id), at=sql.Literal(at)),
            sql.SQL("COMMIT"),
        ]
    )


_APPLIED = """
SELECT command_id, destination, status, detail FROM connector_applied
WHERE destination = %s AND command_id = ANY(%s)
ORDER BY command_id
"""


def record_applied_reissue_acks(
    conn: psycopg.Connection[Any], destination: str, commands: Sequence[str], at: datetime
) -> int:
    """``optout reconcile``'s side, once its ``reconcile_resent`` rows are committed: in a
    transaction of its own (call it outside any transaction; READ COMMITTED), under the exclusive
    lock, the acks of ``commands`` the connector already recorded (its dedupe store,
    ``connector_applied``, committed before it produced the ack) are written as the confirmer
    writes them (``record_reissue_acks``: a command already acknowledged in the trail is
    skipped). Returns how many acks it found."""
    if not commands:
        return 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (reissue_lock_key(destination),))
        rows = conn.execute(_APPLIED, (destination, list(commands))).fetchall()
        record_reissue_acks(conn, [(str(r[0]), str(r[1]), str(r[2]), r[3]) for r in rows], at)
    return len(rows)


_COLUMNS = "id, event_id, at, step, destination, status, detail"


def timeline(conn: psycopg.Connection[Any], event_id: str) -> list[AuditEvent]:
    """The audit events of one request, in the order they were written."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM audit_events WHERE event_id = %s ORDER BY id", (event_id,)
    ).fetchall()
    return [_event(r) for r in rows]


def _event(row: tuple[Any, ...]) -> AuditEvent:
    return AuditEvent(
        id=int(row[0]),
        event_id=row[1],
        at=row[2],
        step=row[3],
        destination=row[4],
        status=row[5],
        detail=row[6],
    )


def stream(
    conn: psycopg.Connection[Any],
    start: datetime,
    end: datetime,
    progress: Callable[[int], None] | None = None,
    every: int = 10_000,
) -> Iterator[AuditEvent]:
    """Every event with ``start <= at < end`` in id order, read with a server-side cursor."""
    count = 0
    with conn.transaction(), conn.cursor(name="audit_export") as cur:
        cur.itersize = 5_000
        cur.execute(
            f"SELECT {_COLUMNS} FROM audit_events WHERE at >= %s AND at < %s ORDER BY at, id", (start, end)
        )
        for row in cur:
            yield _event(row)
            count += 1
            if progress is not None and count % every == 0:
                progress(count)
    if progress is not None and count % every:
        progress(count)


def retention_floor(conn: psycopg.Connection[Any]) -> int:
    """The fewest days audit events are kept (``audit_retention_floor``, migration 0015)."""
    row = conn.execute("SELECT min_days FROM audit_retention_floor").fetchone()
    return int(row[0]) if row else DEFAULT_RETENTION_FLOOR_DAYS


def check_audit_retention(conn: psycopg.Connection[Any], retention_days: int) -> None:
    """``ConfigurationError`` (one line) when ``retention_days`` is below the floor."""
    floor = retention_floor(conn)
    if retention_days < floor:
        raise ConfigurationError(
            f"OPTOUT_AUDIT_RETENTION_DAYS={retention_days} is below the audit trail's floor of "
            f"{floor} days (table audit_retention_floor; only the migration owner can lower it)"
        )


def purge_audit(conn: psycopg.Connection[Any], retention_days: int, dry_run: bool = False) -> int:
    """Delete audit events older than ``retention_days`` (by the database's clock) through
    ``purge_audit_events`` (the app role cannot DELETE them itself); return how many (or, with
    ``dry_run``, would be). ``ConfigurationError`` when ``retention_days`` is below the floor."""
    check_audit_retention(conn, retention_days)
    if dry_run:
        row = conn.execute(
            "SELECT count(*) FROM audit_events WHERE at < now() - make_interval(days => %s)",
            (retention_days,),
        ).fetchone()
        return int(row[0]) if row else 0
    with conn.transaction():
        row = conn.execute("SELECT purge_audit_events(%s)", (retention_days,)).fetchone()
    return int(row[0]) if row else 0


# --- formatting (pure) ----------------------------------------------------------------
FIELDS = ("id", "event_id", "at", "step", "destination", "status", "detail")


def as_dict(event: AuditEvent) -> dict[str, str | int | None]:
    return {
        "id": event.id,
        "event_id": event.event_id,
        "at": event.at.astimezone(UTC).isoformat(),
        "step": event.step,
        "destination": event.destination,
        "status": event.status,
        "detail": event.detail,
    }


def jsonl_line(event: AuditEvent) -> str:
    return json.dumps(as_dict(event), separators=(",", ":")) + "\n"


def csv_header() -> str:
    return _csv_row(list(FIELDS))


def csv_line(event: AuditEvent) -> str:
    return _csv_row(["" if v is None else str(v) for v in as_dict(event).values()])


def _csv_row(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def table(events: Sequence[AuditEvent]) -> str:
    """A human table of a timeline: time, step, destination, status, detail."""
    head = ("at (UTC)", "step", "destination", "status", "detail")
    rows = [
        (
            e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            e.step,
            e.destination or "-",
            e.status or "-",
            e.detail or "",
        )
        for e in events
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = []
    for r in [head, *rows]:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    return "\n".join(line.rstrip() for line in lines) + "\n"
