"""Recording a batch of acknowledgements in PostgreSQL.

``apply_acks`` runs inside the caller's transaction (the step commits it only after the
batch's confirmations are delivered, see ``step.py``; the step runs it in pipeline mode, so
1 and 2 go in one round trip and 3 and 4 are queued for the step's sync):

1. find the requests the acks belong to and lock them (``FOR UPDATE``, in event id
   order, so concurrent confirmers and rebalances serialize instead of deadlocking);
2. read every destination row of those requests (a second statement, run after the first
   took its locks: it sees what the last holder of a lock committed);
3. fold the acks in with the precedence rules of ``outcomes.py`` and write the rows
   that changed (one ``UPDATE ... FROM unnest``);
4. write the requests whose state changed, and build a confirmation for each request
   that has just become complete.

A redelivered batch changes nothing and confirms nothing a second time: a request
already ``CONFIRMED`` is never confirmed again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from services.common.arrays import text_array
from services.common.audit import AuditEvent, Step, append, lock_reissue_acks, safe_detail
from services.common.contract import REPLAY_REQUEST_PREFIX, AckStatus, is_replay_request
from services.common.records import OptOutConfirmedRecord
from services.confirmer.outcomes import (
    Ack,
    DestinationRow,
    RequestRow,
    RequestState,
    confirmation_record,
    fold_acks,
    mismatch,
    request_state,
)


@dataclass
class AckOutcome:
    unknown: set[str] = field(default_factory=set)  # command ids with no destination row
    mismatched: dict[str, str] = field(default_factory=dict)  # command id -> why
    changed: set[str] = field(default_factory=set)  # command ids whose status changed
    unchanged: int = 0  # acks that changed nothing (duplicates, late or out of order)
    confirmations: list[OptOutConfirmedRecord] = field(default_factory=list)
    needs_attention: set[str] = field(default_factory=set)  # event ids that now need attention
    replayed: int = 0  # acks of replayed commands (``optout replay``): recorded, never confirmed


# The batch's command ids find their rows by one primary-key probe each (a LATERAL subquery
# with LIMIT 1, see services/connectors/dedupe.py): a plain join of ``unnest`` became a hash
# join over the whole of destination_status once batches held a few hundred acks.
_REQUESTS_OF_COMMANDS = """
SELECT d.event_id FROM unnest(%s::text[]) AS u(command_id)
CROSS JOIN LATERAL (
    SELECT s.event_id FROM destination_status AS s WHERE s.command_id = u.command_id LIMIT 1
) AS d
"""

_LOCK_REQUESTS = f"""
SELECT event_id, state, customer_id, email, postal_address, scopes, requested_at, action, phone
FROM requests
WHERE event_id IN ({_REQUESTS_OF_COMMANDS})
ORDER BY event_id
FOR UPDATE
"""

_DESTINATIONS = f"""
SELECT command_id, event_id, destination, status, detail, acked_at
FROM destination_status
WHERE event_id IN ({_REQUESTS_OF_COMMANDS})
"""

# Every statement of the batch's transaction finds its rows by key, and the transaction
# starts by turning hash joins, merge joins and sequential scans off (``set_config(..., true)``:
# until it ends), leaving an index probe per key:
# - the batch's UPDATEs join the batch's arrays to their tables; with a few hundred ids or more
#   the planner hashed the whole table (a sequential scan of destination_status or requests
#   for every batch), and UPDATE ... FROM cannot take the reads' LATERAL form;
# - a prepared statement keeps the generic plan it made in the service's first batches, when a
#   new database is nearly empty and reading a whole table is cheapest, until autovacuum
#   analyzes the table (about once a minute): the UPDATE of ``requests`` read the whole table
#   once per request and the reads hashed the whole of destination_status, as the tables grew
#   (a bench-e2e run of 2026-12-02 12:37 UTC: the confirmer's p99 rose to 13 s at 500/s until
#   ``requests`` was analyzed).
# Plans are made under these settings whenever they are made, since this runs first in every
# batch's transaction (tests/integration/test_confirmer_plans.py).
PROBE_ONLY = (
    "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true), "
    "set_config('enable_seqscan', 'off', true)"
)

_UPDATE_DESTINATIONS = """
UPDATE destination_status AS d SET status = t.s, detail = t.dt, acked_at = t.a
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[]) AS t(c, s, dt, a)
WHERE d.command_id = t.c
"""

_UPDATE_REQUESTS = """
UPDATE requests AS r
SET state = t.s, confirmed_at = CASE WHEN t.s = 'CONFIRMED' THEN %s ELSE r.confirmed_at END
FROM unnest(%s::text[], %s::text[]) AS t(e, s)
WHERE r.event_id = t.e
"""


# Acks of replayed commands (services/replay): the replayer writes no row per command (it
# would cost a million inserts on the replay's path); the confirmer records each ack in
# ``replay_commands`` when it arrives, for a command whose request id names a run of
# ``replay_runs`` (inserted before the run sends anything) to the ack's destination, with the
# same precedence as ``outcomes.fold_acks`` (a success is final, REJECTED gives way to a
# success). They belong to no request, so nothing is ever confirmed for them.
_REPLAY_RUNS = "SELECT replay_id, destination FROM replay_runs WHERE replay_id = ANY(%s)"

#
# The ack's ``acknowledged`` audit row (services/common/audit.py, "Acks that beat their
# command's audit row"): under the destination's shared lock, taken before this statement, a
# command with no ``replayed`` audit row yet is flagged ``audit_pending`` (migration 0020);
# the replayer writes its row after the batch's ``replayed`` rows. The detail is stored as
# the audit trail takes it (``safe_detail``: one line, emails and phones redacted), so the
# replayer can copy it there.
_UPSERT_REPLAYED = """
INSERT INTO replay_commands AS r
    (command_id, replay_id, destination, status, detail, acked_at, audit_pending)
SELECT u.*, NOT EXISTS (
    SELECT 1 FROM audit_events s
    WHERE s.command_id = u.c AND s.destination = u.d AND s.step = 'replayed'
)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
    AS u(c, r, d, s, dt, a)
ON CONFLICT (command_id) DO UPDATE SET status = excluded.status, detail = excluded.detail,
    acked_at = excluded.acked_at, audit_pending = excluded.audit_pending
WHERE r.replay_id = excluded.replay_id AND r.destination = excluded.destination
  AND (r.status = 'PENDING' OR (r.status = 'REJECTED' AND excluded.status <> 'REJECTED'))
"""


def _apply_replayed(cur: psycopg.Cursor[Any], acks: Sequence[Ack], outcome: AckOutcome) -> None:
    """Take the acks of replayed commands out of ``outcome.unknown`` and record them."""
    candidates = [a for a in acks if a.command_id in outcome.unknown and is_replay_request(a.request_id)]
    if not candidates:
        return
    prefix = len(REPLAY_REQUEST_PREFIX)
    cur.execute(_REPLAY_RUNS, (sorted({a.request_id[prefix:] for a in candidates}),))
    runs: dict[str, str] = {str(r[0]): str(r[1]) for r in cur.fetchall()}
    final: dict[str, Ack] = {}
    for ack in candidates:
        replay_id = ack.request_id[prefix:]
        destination = runs.get(replay_id)
        if destination is None:
            continue  # no such run: unknown
        outcome.unknown.discard(ack.command_id)
        if ack.destination != destination:
            outcome.mismatched[ack.command_id] = (
                f"ack says request {ack.request_id} at {ack.destination}; that replay sends to {destination}"
            )
            continue
        outcome.replayed += 1
        previous = final.get(ack.command_id)
        if previous is None or previous.status is AckStatus.REJECTED:
            final[ack.command_id] = ack  # the last success, or the last refusal
    if final:
        ordered = [final[c] for c in sorted(final)]  # in key order: concurrent confirmers never deadlock
        lock_reissue_acks(cur, {a.destination for a in ordered})
        cur.execute(
            _UPSERT_REPLAYED,
            (
                [a.command_id for a in ordered],
                [a.request_id[prefix:] for a in ordered],
                [a.destination for a in ordered],
                [a.status.value for a in ordered],
                [safe_detail(a.detail) for a in ordered],
                [a.acked_at for a in ordered],
            ),
        )


def apply_acks(conn: psycopg.Connection[Any], acks: Sequence[Ack], now: datetime) -> AckOutcome:
    """Record ``acks`` (in message order); call inside a transaction."""
    outcome = AckOutcome()
    if not acks:
        return outcome
    command_ids = sorted({a.command_id for a in acks})
    with conn.cursor() as cur, conn.cursor() as destinations:
        # all three sent before either read is fetched: one round trip in pipeline mode
        conn.execute(PROBE_ONLY)  # every statement below: index probes by key (see PROBE_ONLY)
        ids = text_array(command_ids)  # one literal (services/common/arrays.py)
        cur.execute(_LOCK_REQUESTS, (ids,))
        destinations.execute(_DESTINATIONS, (ids,))
        requests = {
            row[0]: RequestRow(
                row[0], row[1], row[2], row[3], row[4], tuple(row[5]), row[6], action=row[7], phone=row[8]
            )
            for row in cur.fetchall()
        }
        rows = {r[0]: DestinationRow(*r) for r in destinations.fetchall() if r[1] in requests}

        valid: list[Ack] = []
        for ack in acks:
            row = rows.get(ack.command_id)
            if row is None:
                outcome.unknown.add(ack.command_id)
                continue
            why = mismatch(ack, row)
            if why is not None:
                outcome.mismatched[ack.command_id] = why
                continue
            valid.append(ack)
        _apply_replayed(cur, acks, outcome)
        changed = fold_acks(rows, valid)
        outcome.changed = set(changed)
        outcome.unchanged = len(valid) - len(changed)
        if changed:
            cur.execute(
                _UPDATE_DESTINATIONS,
                (
                    text_array(list(changed)),
                    text_array([r.status for r in changed.values()]),
                    text_array([r.detail for r in changed.values()]),
                    text_array(
                        [None if r.acked_at is None else r.acked_at.isoformat() for r in changed.values()]
                    ),
                ),
            )

        rows.update(changed)
        by_request: dict[str, list[DestinationRow]] = defaultdict(list)
        for row in rows.values():
            by_request[row.event_id].append(row)
        new_states: dict[str, RequestState] = {}
        for event_id in sorted({r.event_id for r in changed.values()}):
            request = requests[event_id]
            state = request_state(r.status for r in by_request[event_id])
            if state.value == request.state:
                continue
            new_states[event_id] = state
            if state is RequestState.CONFIRMED:
                outcome.confirmations.append(confirmation_record(request, by_request[event_id], now))
            elif state is RequestState.NEEDS_ATTENTION:
                outcome.needs_attention.add(event_id)
        # The audit trail (services/common/audit.py): one statement for the batch.
        audit = [
            AuditEvent(
                r.event_id,
                now,
                Step.ACKNOWLEDGED,
                destination=r.destination,
                status=r.status,
                detail=safe_detail(r.detail),
            )
            for r in sorted(changed.values(), key=lambda r: (r.event_id, r.command_id))
        ]
        audit += [
            AuditEvent(e, now, Step.CONFIRMED if s is RequestState.CONFIRMED else Step.NEEDS_ATTENTION)
            for e, s in new_states.items()
            if s is not RequestState.PENDING
        ]
        append(cur, audit)
        if new_states:
            cur.execute(
                _UPDATE_REQUESTS,
                (
                    now,
                    text_array(list(new_states)),
                    text_array([s.value for s in new_states.values()]),
                ),
            )
    return outcome
