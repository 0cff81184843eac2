"""Recording a batch of requests in PostgreSQL: one transaction, a few round trips.

Rows go in with multi-row ``INSERT ... SELECT FROM unnest(...)`` statements;
``ON CONFLICT DO NOTHING`` makes a redelivered batch a no-op apart from the
re-send bookkeeping. The same statement adds the identifiers of every newly recorded
opt-out to the encrypted suppression list (``services/suppression``).

Opting back in (``services/domain/preferences.py``): before the requests are written, the
transaction upserts the suppression state (``suppression_state``, one row per subject and
concrete scope) with the newest-wins guard, and learns from ``RETURNING`` which rows each
request won. A request then takes effect only for those scopes: commands go only to the
destinations serving them (the others are *withheld*), and a request that takes effect for
no scope is *superseded*: recorded CONFIRMED with ``effective_scopes = '{}'``, no command and
no confirmation. An opt-out writes its suppression-list entries for the scopes it took effect
for; an opt-in that takes effect removes those scopes from the person's entries (an entry
left with no scope is deleted: nothing to suppress, nothing to keep).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import psycopg

from services.common.arrays import SPLIT_TEXT, bool_array, int_array, split_text
from services.common.audit import AuditEvent, Step
from services.common.contract import Action, Scope, Source
from services.common.sealing import KeyRing
from services.domain.planning import PlannedCommand
from services.domain.preferences import (
    Key,
    concrete_scopes,
    effective_scopes,
    newest_per_key,
    serves,
    subjects_of,
)
from services.domain.validation import OptOutRequest
from services.intake.enrich import enrichment_columns
from services.suppression.entries import Entry, Kind, entries_of, nonces, seal

_SCOPE_VALUES = frozenset(s.value for s in Scope)


def split_columns(statement: str) -> str:
    """``statement`` with each text column (``%s::text[]``) read from ``split_text``'s two
    parameters (``services.common.arrays.SPLIT_TEXT``: cheaper for PostgreSQL to read than an
    array literal)."""
    return statement.replace("%s::text[]", SPLIT_TEXT)


# A request's scopes travel as one text per request, split in SQL (``string_to_array``): a
# separator that needs no quoting in an array literal (``services.common.arrays``).
SCOPE_SEPARATOR = "|"
_SCOPES = {s.value: s for s in Scope}
# An enum member's value by a dictionary lookup (``.value`` is a Python-level property: about
# twenty reads per request).
_VALUE: dict[StrEnum, str] = {m: m.value for e in (Scope, Action, Source, Kind) for m in e}
# Which subject prefix a suppression-list kind's hash goes with (the same SHA-256).
_SUBJECT_PREFIX = {
    Kind.EMAIL.value: "email_sha256:",
    Kind.PHONE.value: "phone_sha256:",
    Kind.POSTAL.value: "postal:",
}


@dataclass
class ListedEntries:
    """A chunk's suppression-list entries as the statement's arrays: one row per (kind, hash),
    sorted by it; a person named by several requests of the chunk gets the latest value and
    request, the first request and the union of the scopes. ``events``/``rows``: which
    request makes which row (1-based) worth writing, if that request is new."""

    kinds: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    sealed: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    first: list[str] = field(default_factory=list)
    last: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        requests: Sequence[OptOutRequest],
        ring: KeyRing,
        scopes_of: Mapping[str, Sequence[str]] | None = None,
    ) -> ListedEntries:
        """``scopes_of``: the scopes to list per event id (default: the request's scopes)."""

        def scopes(request: OptOutRequest) -> Sequence[str]:
            if scopes_of is not None and request.event_id in scopes_of:
                return scopes_of[request.event_id]
            return [_VALUE[s] for s in request.scopes]

        merged: dict[tuple[str, str], tuple[Entry, list[OptOutRequest]]] = {}
        for request in requests:
            for entry in entries_of(request):
                key = (_VALUE[entry.kind], entry.sha256)
                seen = merged.get(key)
                if seen is None:
                    merged[key] = (entry, [request])
                else:
                    merged[key] = (entry, [*seen[1], request])  # the latest value wins
        listed = cls()
        fresh = nonces(len(merged))
        for row, key in enumerate(sorted(merged), start=1):
            entry, named_by = merged[key]
            listed.kinds.append(key[0])
            listed.hashes.append(key[1])
            listed.sealed.append(seal(ring, entry, fresh[row - 1]))
            listed.scopes.append(SCOPE_SEPARATOR.join(sorted({s for r in named_by for s in scopes(r)})))
            listed.first.append(named_by[0].event_id)
            listed.last.append(named_by[-1].event_id)
            for request in named_by:
                listed.events.append(request.event_id)
                listed.rows.append(row)
        return listed


@dataclass
class RecordOutcome:
    new: set[str] = field(default_factory=set)  # event ids recorded now
    duplicates: set[str] = field(default_factory=set)  # seen before, same content
    conflicts: set[str] = field(default_factory=set)  # seen before, different content
    resend: set[str] = field(default_factory=set)  # command ids of duplicates still unacknowledged
    # Command ids of new requests not sent: the request did not take effect for any scope the
    # destination serves (newest wins). Superseded: new event ids that took effect nowhere.
    withheld: set[str] = field(default_factory=set)
    superseded: set[str] = field(default_factory=set)
    # The subjects whose state this chunk changed, and those of its duplicates (a redelivery
    # publishes again what may not have been published): their current state goes to the
    # compacted topic optout.suppressions once the batch has committed (``states``).
    states: set[str] = field(default_factory=set)


# One statement records the new requests, their destination rows and their suppression-list
# entries: the first CTE inserts the requests (conflicting event ids are skipped), and only
# the commands and entries of requests inserted now are recorded. Entries come merged per
# (kind, hash) and sorted by it (see ``ListedEntries``); an entry is written when one of its
# requests is new (``m`` maps request ids to entry rows), in key order, so concurrent writers
# lock rows in one order and never deadlock, and merged with an existing entry: the latest
# value and request, the union of the scopes. Text columns go as one separated string each
# (``split_columns``), instants as binary arrays (%b).
# A request with no command to send (superseded, or effective only for scopes no destination
# of it serves) is recorded CONFIRMED at once (``cf``).
_INSERT_REQUESTS = """
    INSERT INTO requests (event_id, content_sha256, subject_key, customer_id, email, phone,
                          postal_address, email_sha256, phone_sha256, postal_sha256, scopes,
                          source, jurisdiction, requested_at, received_at, due_at, deadline_rule,
                          directory_identifiers, identifier_sources,
                          action, device_id, effective_scopes, state, confirmed_at)
    SELECT e, c, k, cu, em, ph, pa::jsonb, eh, phh, pah, string_to_array(sc, '|'), so, ju, ra, %b,
           du, dr, di::jsonb, ds::jsonb, ac, dv, string_to_array(ef, '|'),
           CASE WHEN cf THEN 'CONFIRMED' ELSE 'PENDING' END, CASE WHEN cf THEN %b END
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                %s::text[], %b::timestamptz[], %b::timestamptz[], %s::text[], %s::text[],
                %s::text[], %s::text[], %s::text[], %s::text[], %s::bool[])
         AS t(e, c, k, cu, em, ph, pa, eh, phh, pah, sc, so, ju, ra, du, dr, di, ds, ac, dv, ef, cf)"""
_LIST_ENTRIES = """
    INSERT INTO suppression_list AS s (kind, sha256, sealed, scopes, first_request_id,
                                       last_request_id, created_at, updated_at)
    SELECT t.k, t.h, t.v, string_to_array(t.sc, '|'), t.f, t.l, %b, %b
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
         WITH ORDINALITY AS t(k, h, v, sc, f, l, n)"""
_MERGE_ENTRIES = """
    ORDER BY t.n
    ON CONFLICT (kind, sha256) DO UPDATE
    SET sealed = EXCLUDED.sealed,
        scopes = CASE WHEN s.scopes @> EXCLUDED.scopes THEN s.scopes
                      ELSE ARRAY(SELECT DISTINCT x FROM unnest(s.scopes || EXCLUDED.scopes) AS x
                                 ORDER BY x) END,
        last_request_id = EXCLUDED.last_request_id,
        updated_at = EXCLUDED.updated_at"""
_RECORD = split_columns(f"""
WITH new AS ({_INSERT_REQUESTS}
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), listed AS ({_LIST_ENTRIES}
    WHERE t.n IN (SELECT m.n FROM unnest(%s::text[], %s::int8[]) AS m(e, n)
                  JOIN new ON new.event_id = m.e){_MERGE_ENTRIES}
), commands AS (
    INSERT INTO destination_status (command_id, event_id, destination, first_issued_at,
                                    last_issued_at)
    SELECT t.c, t.e, t.d, %b, %b
    FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(c, e, d) JOIN new ON new.event_id = t.e
    ON CONFLICT (command_id) DO NOTHING
)
SELECT event_id FROM new
""")

# ``_RECORD`` when none of the requests is stored (the transaction's first read found none;
# ``record_batch``): every request, entry and command is written, with no join to the inserted
# requests and no conflict check on requests and destination_status (a plain insert checks
# its unique keys while it inserts; ``ON CONFLICT`` probes each key first and confirms each
# row apart: issue #15). Should another writer have recorded one of them meanwhile, the
# statement fails on the unique key instead, and the transaction is done again with ``_RECORD``.
_RECORD_ALL_NEW = split_columns(f"""
WITH new AS ({_INSERT_REQUESTS}
), listed AS ({_LIST_ENTRIES}{_MERGE_ENTRIES}
)
INSERT INTO destination_status (command_id, event_id, destination, first_issued_at, last_issued_at)
SELECT t.c, t.e, t.d, %b, %b FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(c, e, d)
""")

# The newest-wins guard of services/domain/preferences.py (``StateEntry.rank``): a row changes
# only for a request ranking higher by (requested_at, suppressed, event_id). Rows come sorted
# by key, so concurrent writers lock them in one order. RETURNING: the rows the chunk won.
_UPSERT_STATE = split_columns("""
INSERT INTO suppression_state AS st (subject, scope, suppressed, since, event_id, action,
                                     updated_at)
SELECT t.s, t.sc, t.su, t.si, t.e, t.a, %b
FROM unnest(%s::text[], %s::text[], %s::bool[], %b::timestamptz[], %s::text[], %s::text[])
     WITH ORDINALITY AS t(s, sc, su, si, e, a, n)
ORDER BY t.n
ON CONFLICT (subject, scope) DO UPDATE
SET suppressed = EXCLUDED.suppressed, since = EXCLUDED.since, event_id = EXCLUDED.event_id,
    action = EXCLUDED.action, updated_at = EXCLUDED.updated_at
WHERE (EXCLUDED.since, EXCLUDED.suppressed, EXCLUDED.event_id)
      > (st.since, st.suppressed, st.event_id)
RETURNING subject, scope
""")

# Reads of a batch's keys probe the primary key once per key (LATERAL subqueries kept apart by
# LIMIT 1 or OFFSET 0): as ``= ANY(...)`` or a join of ``unnest`` PostgreSQL read the whole of
# requests and suppression_state instead once a batch held a few dozen requests (bench-e2e:
# 471 and 457 sequential scans in 40 s; tests/integration/test_intake_plans.py).
# The stored state of the rows the chunk did not win (locked by the upsert, which locks a
# conflicting row even when its guard keeps it unchanged). Rows it won hold its own values.
_STATE_OF = split_columns("""
SELECT st.subject, st.scope, st.suppressed
FROM unnest(%s::text[], %s::text[]) AS t(s, sc)
CROSS JOIN LATERAL (
    SELECT * FROM suppression_state AS x WHERE x.subject = t.s AND x.scope = t.sc LIMIT 1
) AS st
""")

# Suppression-list entries of the people an opt-in took effect for, and the scopes their
# state no longer suppresses.
_ENTRIES_TO_PRUNE = """
SELECT s.kind, s.sha256, s.scopes FROM suppression_list s
JOIN unnest(%b::text[], %b::text[]) AS t(k, h) ON s.kind = t.k AND s.sha256 = t.h
ORDER BY s.kind, s.sha256
FOR UPDATE OF s
"""
_OPTED_IN = """
SELECT st.subject, st.scope FROM (SELECT DISTINCT unnest(%b::text[]) AS subject) AS u
CROSS JOIN LATERAL (
    SELECT * FROM suppression_state AS s WHERE s.subject = u.subject AND NOT s.suppressed OFFSET 0
) AS st
"""
_PRUNE = """
UPDATE suppression_list s SET scopes = string_to_array(t.sc, ','), updated_at = %b
FROM unnest(%b::text[], %b::text[], %b::text[]) AS t(k, h, sc)
WHERE s.kind = t.k AND s.sha256 = t.h
"""
_DELETE_ENTRIES = """
DELETE FROM suppression_list s USING unnest(%b::text[], %b::text[]) AS t(k, h)
WHERE s.kind = t.k AND s.sha256 = t.h
"""

# PostgreSQL's JIT compiler (on by default, for plans estimated above ``jit_above_cost``)
# compiled intake's batch statements on every run: their estimates are large (a thousand
# keys, each a lateral probe, and on tables not yet analyzed hundreds of rows per probe), their
# work is small. Compiling took 58 of 68 ms of a 1,000-subject state read and about a third of
# the backends' CPU per event in all (bench-intake, issue #15). Off for the transaction (``SET
# LOCAL``: works through any pooler, nothing leaks to the connection's later use).
NO_JIT = "SET LOCAL jit = off"

_EXISTING = split_columns("""
SELECT r.event_id, r.content_sha256 FROM (SELECT DISTINCT unnest(%s::text[]) AS e) AS u
CROSS JOIN LATERAL (SELECT * FROM requests AS x WHERE x.event_id = u.e LIMIT 1) AS r
""")

_MARK_RESENT = """
UPDATE destination_status SET last_issued_at = %s, issue_count = issue_count + 1
WHERE event_id = ANY(%s) AND status = 'PENDING'
RETURNING command_id, event_id, destination, issue_count
"""


def record_batch(
    conn: psycopg.Connection[Any],
    requests: Sequence[OptOutRequest],
    commands: dict[str, list[PlannedCommand]],
    now: datetime,
    ring: KeyRing,
) -> RecordOutcome:
    """Record ``requests`` (unique event ids), the suppression state they win, the commands
    of the scopes they take effect for and their suppression-list entries (sealed with
    ``ring``'s current key) in one transaction.

    The requests are first written as all new (``_RECORD_ALL_NEW``: none of them is stored, as
    the transaction's first read found): when another writer recorded one of them meanwhile
    (or a request repeats a command id), that statement fails on the unique key, and the
    transaction is done again with the statement that skips conflicting rows (``_RECORD``)."""
    if not requests:
        return RecordOutcome()
    try:
        return _record_batch(conn, requests, commands, now, ring, all_new=True)
    except psycopg.errors.UniqueViolation:
        return _record_batch(conn, requests, commands, now, ring, all_new=False)


def _record_batch(
    conn: psycopg.Connection[Any],
    requests: Sequence[OptOutRequest],
    commands: dict[str, list[PlannedCommand]],
    now: datetime,
    ring: KeyRing,
    all_new: bool,
) -> RecordOutcome:
    outcome = RecordOutcome()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(NO_JIT)
        cur.execute(_EXISTING, (*split_text([r.event_id for r in requests]),))
        stored = dict(cur.fetchall())
        candidates = [r for r in requests if r.event_id not in stored]
        effective, changed = _decide(cur, candidates, now)
        kept = {
            r.event_id: [c for c in commands.get(r.event_id, []) if serves(c.serves, effective[r.event_id])]
            for r in candidates
        }
        for r in candidates:
            kept_ids = {c.command_id for c in kept[r.event_id]}
            outcome.withheld |= {c.command_id for c in commands.get(r.event_id, [])} - kept_ids
        all_commands = [c for r in candidates for c in kept[r.event_id]]
        opt_outs = [r for r in candidates if r.action is Action.OPT_OUT and effective[r.event_id]]
        listed = ListedEntries.of(
            opt_outs, ring, {r.event_id: _listed_scopes(r, effective[r.event_id]) for r in opt_outs}
        )
        requests_columns = (
            now,
            now,
            *split_text([r.event_id for r in candidates]),
            *split_text([r.content_sha256 for r in candidates]),
            *split_text([r.subject_key for r in candidates]),
            *split_text([r.customer_id for r in candidates]),
            *split_text([r.email for r in candidates]),
            *split_text([r.phone for r in candidates]),
            *split_text([json.dumps(r.postal_address) if r.postal_address else None for r in candidates]),
            *split_text([r.email_sha256 for r in candidates]),
            *split_text([r.phone_sha256 for r in candidates]),
            *split_text([r.postal_sha256 for r in candidates]),
            *split_text([SCOPE_SEPARATOR.join(r.scopes) for r in candidates]),
            *split_text([_VALUE[r.source] for r in candidates]),
            *split_text([r.jurisdiction for r in candidates]),
            [r.requested_at for r in candidates],
            [r.due_at for r in candidates],
            *split_text([r.deadline_rule for r in candidates]),
            *(p for column in enrichment_columns(candidates) for p in split_text(column)),
            *split_text([_VALUE[r.action] for r in candidates]),
            *split_text([r.device_id for r in candidates]),
            *split_text(
                [SCOPE_SEPARATOR.join([_VALUE[s] for s in sorted(effective[r.event_id])]) for r in candidates]
            ),
            bool_array([not kept[r.event_id] for r in candidates]),
        )
        command_columns = (
            now,
            now,
            *split_text([c.command_id for c in all_commands]),
            *split_text([c.record["request_id"] for c in all_commands]),
            *split_text([c.destination for c in all_commands]),
        )
        if all_new:
            cur.execute(
                _RECORD_ALL_NEW,
                (
                    *requests_columns,
                    now,
                    now,
                    *split_text(listed.kinds),
                    *split_text(listed.hashes),
                    *split_text(listed.sealed),
                    *split_text(listed.scopes),
                    *split_text(listed.first),
                    *split_text(listed.last),
                    *command_columns,
                ),
            )
            outcome.new = {r.event_id for r in candidates}
        else:
            cur.execute(
                _RECORD,
                (
                    *requests_columns,
                    now,
                    now,
                    *split_text(listed.kinds),
                    *split_text(listed.hashes),
                    *split_text(listed.sealed),
                    *split_text(listed.scopes),
                    *split_text(listed.first),
                    *split_text(listed.last),
                    *split_text(listed.events),
                    int_array(listed.rows),
                    *command_columns,
                ),
            )
            outcome.new = {row[0] for row in cur.fetchall()}
        outcome.superseded = {e for e in outcome.new if not effective[e]}
        opt_ins = [
            r
            for r in candidates
            if r.event_id in outcome.new and r.action is Action.OPT_IN and effective[r.event_id]
        ]
        if opt_ins:
            _prune_entries(cur, opt_ins, now)
        for r in requests:
            if r.event_id in outcome.new:
                continue
            if r.event_id in stored and stored[r.event_id] == r.content_sha256:
                outcome.duplicates.add(r.event_id)
            elif r.event_id in stored:
                outcome.conflicts.add(r.event_id)
            else:  # recorded meanwhile by another writer: look again
                row = cur.execute(_EXISTING, (*split_text([r.event_id]),)).fetchone()
                if row is not None and row[1] == r.content_sha256:
                    outcome.duplicates.add(r.event_id)
                else:
                    outcome.conflicts.add(r.event_id)
        outcome.withheld &= {
            c.command_id for r in requests if r.event_id in outcome.new for c in commands.get(r.event_id, [])
        }
        if outcome.duplicates:
            cur.execute(_MARK_RESENT, (now, list(outcome.duplicates)))
            resent = cur.fetchall()
            outcome.resend = {row[0] for row in resent}
        else:
            resent = []
        # The audit trail (services/common/audit.py): one statement for the chunk.
        _append_audit(cur, _audit_rows(candidates, kept, outcome, resent), now)
        outcome.states = changed | {
            s for r in requests if r.event_id in outcome.duplicates for s in subjects_of(r)
        }
    return outcome


@dataclass
class AuditRows:
    """A chunk's audit rows (``services/common/audit.py``) as the statement's columns; every
    row is at the chunk's ``now``."""

    event_ids: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    destinations: list[str | None] = field(default_factory=list)
    statuses: list[str | None] = field(default_factory=list)
    details: list[str | None] = field(default_factory=list)

    def add(
        self,
        event_id: str,
        step: str,
        destination: str | None = None,
        status: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.event_ids.append(event_id)
        self.steps.append(step)
        self.destinations.append(destination)
        self.statuses.append(status)
        self.details.append(detail)

    def events(self, now: datetime) -> list[AuditEvent]:
        """The same rows as ``services.common.audit.append`` takes them."""
        return [
            AuditEvent(e, now, step, destination, status, detail)
            for e, step, destination, status, detail in zip(
                self.event_ids, self.steps, self.destinations, self.statuses, self.details, strict=True
            )
        ]


# ``services.common.audit.append`` for intake's rows, which share one instant: the columns
# as array literals (``services.common.arrays``), rows inserted in the arrays' order.
_APPEND_AUDIT = split_columns("""
INSERT INTO audit_events (event_id, at, step, destination, status, detail)
SELECT t.e, %b, t.s, t.d, t.st, t.de
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) AS t(e, s, d, st, de)
""")


def _append_audit(cur: psycopg.Cursor[Any], rows: AuditRows, now: datetime) -> None:
    if not rows.event_ids:
        return
    cur.execute(
        _APPEND_AUDIT,
        (
            now,
            *split_text(rows.event_ids),
            *split_text(rows.steps),
            *split_text(rows.destinations),
            *split_text(rows.statuses),
            *split_text(rows.details),
        ),
    )


def _audit_rows(
    candidates: Sequence[OptOutRequest],
    kept: Mapping[str, Sequence[PlannedCommand]],
    outcome: RecordOutcome,
    resent: Sequence[tuple[Any, ...]],
) -> AuditRows:
    """What the chunk did, per request, in order: recorded, enriched, the newest-wins
    decision, the commands sent; then the commands re-sent for redelivered requests."""
    rows = AuditRows()
    add = rows.add
    new, superseded = outcome.new, outcome.superseded
    for r in candidates:
        e = r.event_id
        if e not in new:
            continue
        add(e, _RECORDED, status=_VALUE[r.action])
        if r.enrichment:
            added = r.enrichment
            add(
                e,
                Step.ENRICHED.value,
                detail=f"directory added {len(added.emails)} email(s), {len(added.phones)} phone(s), "
                f"{len(added.postal_addresses)} postal address(es)",
            )
        if e in superseded:
            add(e, Step.SUPERSEDED.value, detail="a newer request holds for every scope")
        elif r.action is Action.OPT_IN:
            add(e, Step.OPTED_IN.value)
        for c in kept[e]:
            add(e, _COMMAND_SENT, c.destination, None, c.command_id)
    for command_id, event_id, destination, count in resent:
        add(
            event_id, Step.COMMAND_RESENT.value, destination=destination, detail=f"{command_id} issue {count}"
        )
    return rows


_COMMAND_SENT = Step.COMMAND_SENT.value
_RECORDED = Step.RECORDED.value


def _decide(
    cur: psycopg.Cursor[Any], candidates: Sequence[OptOutRequest], now: datetime
) -> tuple[dict[str, frozenset[Scope]], set[str]]:
    """Upsert the state the candidates win (newest wins, guarded against the stored state);
    return the scopes each takes effect for, given the state then, and the subjects whose
    state changed."""
    if not candidates:
        return {}, set()
    chunk_winners = newest_per_key(candidates)
    keys = sorted(chunk_winners)
    entries = [chunk_winners[k] for k in keys]
    cur.execute(
        _UPSERT_STATE,
        (
            now,
            *split_text([k[0] for k in keys]),
            *split_text([_VALUE[k[1]] for k in keys]),
            bool_array([e.suppressed for e in entries]),
            [e.since for e in entries],
            *split_text([e.event_id for e in entries]),
            *split_text([_VALUE[e.action] for e in entries]),
        ),
    )
    if cur.rowcount == len(keys):  # the usual case: the chunk won every row it proposed
        alone = effective_when_all_won(candidates, len(keys))
        if alone is not None:
            return alone, {k[0] for k in keys}
        won = keys
        lost: list[Key] = []
    else:
        # Rows come back as (text, text); a Scope is a StrEnum, equal to its value and hashed
        # alike, so the keys are looked up as they are (no enum per row).
        returned = set(cur.fetchall())
        won = [k for k in keys if k in returned]
        lost = [k for k in keys if k not in returned]
    after: dict[Key, bool] = {k: chunk_winners[k].suppressed for k in won}
    if lost:
        cur.execute(_STATE_OF, (*split_text([k[0] for k in lost]), *split_text([k[1].value for k in lost])))
        after.update({(subject, _SCOPES[scope]): bool(v) for subject, scope, v in cur.fetchall()})
    return {r.event_id: effective_scopes(r, after) for r in candidates}, {k[0] for k in won}


def effective_when_all_won(
    candidates: Sequence[OptOutRequest], keys: int
) -> dict[str, frozenset[Scope]] | None:
    """When the chunk won every one of its ``keys`` rows (``newest_per_key``) and no two of
    its requests share a (subject, scope): each request takes effect for all its scopes,
    what ``effective_scopes`` gives then, without a lookup per subject and scope. None when
    that does not hold (some request shares a row, or names no subject)."""
    if keys != sum(len(r.subjects) * len(_concrete_set(r.scopes)) for r in candidates):
        return None
    if not all(r.subjects for r in candidates):
        return None
    return {r.event_id: _concrete_set(r.scopes) for r in candidates}


@lru_cache(maxsize=256)
def _concrete_set(scopes: tuple[Scope, ...]) -> frozenset[Scope]:
    """A request's concrete scopes as a set (a few sorted combinations exist)."""
    return frozenset(concrete_scopes(scopes))


def _listed_scopes(request: OptOutRequest, effective: frozenset[Scope]) -> list[str]:
    """The scopes an opt-out's suppression-list entries get: its own, or where it took effect."""
    if set(concrete_scopes(request.scopes)) <= effective:
        return [_VALUE[s] for s in request.scopes]
    return sorted(_VALUE[s] for s in effective)


def _prune_entries(cur: psycopg.Cursor[Any], opt_ins: Sequence[OptOutRequest], now: datetime) -> None:
    """Remove from the opted-in people's suppression-list entries every scope their state no
    longer suppresses (``ALL`` is expanded first); delete entries left with none."""
    keys = sorted({(e.kind.value, e.sha256) for r in opt_ins for e in entries_of(r)})
    if not keys:
        return
    cur.execute(_ENTRIES_TO_PRUNE, ([k for k, _ in keys], [h for _, h in keys]))
    rows = cur.fetchall()
    if not rows:
        return
    subjects = [_SUBJECT_PREFIX[kind] + sha256 for kind, sha256, _ in rows]
    cur.execute(_OPTED_IN, (subjects,))
    opted_in = {(subject, scope) for subject, scope in cur.fetchall()}
    update: list[tuple[str, str, str]] = []
    delete: list[tuple[str, str]] = []
    for (kind, sha256, scopes), subject in zip(rows, subjects, strict=True):
        expanded = [s.value for s in concrete_scopes(Scope(x) for x in scopes if x in _SCOPE_VALUES)]
        remaining = [s for s in expanded if (subject, s) not in opted_in]
        if not remaining:
            delete.append((kind, sha256))
        elif len(remaining) < len(expanded):
            update.append((kind, sha256, ",".join(sorted(remaining))))
    if update:
        cur.execute(_PRUNE, (now, [u[0] for u in update], [u[1] for u in update], [u[2] for u in update]))
    if delete:
        cur.execute(_DELETE_ENTRIES, ([d[0] for d in delete], [d[1] for d in delete]))
