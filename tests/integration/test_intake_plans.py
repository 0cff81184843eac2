"""Intake's reads of a batch's keys on the real database: one primary-key probe per key,
whatever the batch's and the tables' sizes (services/intake/store.py, states.py).

As ``key = ANY(...)`` or a join of ``unnest``, PostgreSQL read the whole of ``requests`` and
``suppression_state`` for every batch of a few dozen requests or more on tables grown since
their last ANALYZE (bench-e2e's first 40 s: 471 and 457 sequential scans)."""

from __future__ import annotations

import pytest

from services.common.arrays import split_text
from services.intake.states import _CURRENT, _SCOPE_ORDER
from services.intake.store import _EXISTING, _OPTED_IN, _STATE_OF
from tests.support.plans import batch_plans

pytestmark = pytest.mark.integration

REQUESTS = (
    "INSERT INTO requests (event_id, content_sha256, subject_key, scopes, source, requested_at, due_at, "
    "deadline_rule) SELECT 'evt-' || g, 'x', 'k', ARRAY['EMAIL_MARKETING'], 'web', now(), now(), 'r' "
    "FROM generate_series(%s::int, %s::int) AS g"
)
STATES = (
    "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at) "
    "SELECT 'email:' || g, sc, true, now(), 'evt-' || g, 'OPT_OUT', now() "
    "FROM generate_series(%s::int, %s::int) AS g, unnest(ARRAY['EMAIL_MARKETING', 'SMS_MARKETING']) AS sc"
)

# Intake's text columns go as split_text's two parameters (one of them NULL).
EVENTS = split_text([f"evt-{n}" for n in range(1, 2001)])
SUBJECTS = split_text([f"email:{n}" for n in range(1, 2001)])
SCOPES = split_text(["EMAIL_MARKETING"] * 2000)
SUBJECTS_LITERAL = "{" + ",".join(f"email:{n}" for n in range(1, 2001)) + "}"

CASES = {
    "existing": (_EXISTING, EVENTS, "requests_pkey"),
    "current": (_CURRENT, (*SUBJECTS, _SCOPE_ORDER), "suppression_state_pkey"),
    "state_of": (_STATE_OF, (*SUBJECTS, *SCOPES), "suppression_state_pkey"),
    "opted_in": (_OPTED_IN, (SUBJECTS_LITERAL,), "suppression_state_pkey"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_read_probes_the_primary_key_whatever_the_sizes(database: dict[str, str], case: str) -> None:
    """Custom plan (for the values) and generic plan (what a prepared statement may keep) on
    tables that grew to 30,000 keys since their last ANALYZE (at 300)."""
    sql, params, index = CASES[case]
    grow = [("requests", REQUESTS), ("suppression_state", STATES)]
    for plan in batch_plans(database["admin"], grow, sql, params):
        assert "Seq Scan" not in plan, plan
        assert index in plan, plan
