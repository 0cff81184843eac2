"""The newest-wins rule of opting out and back in (services/domain/preferences.py)."""

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.contract import CONCRETE_SCOPES, Action, Scope
from services.domain.preferences import (
    Key,
    StateEntry,
    apply,
    concrete_scopes,
    decide,
    effective_scopes,
    newest_per_key,
    subjects_of,
)
from services.domain.validation import OptOutRequest, validate_request

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)


def request(
    n: int,
    action: Action,
    scopes: list[str],
    minutes_ago: int,
    email: str | None = "jane@example.com",
    customer_id: str | None = None,
) -> OptOutRequest:
    return validate_request(
        {
            "event_id": f"evt-{n}",
            "customer_id": customer_id,
            "email": email,
            "phone": None,
            "postal_address": None,
            "scopes": scopes,
            "source": "API",
            "jurisdiction": None,
            "requested_at": NOW - timedelta(minutes=minutes_ago),
            "action": action.value,
            "device_id": None,
        },
        NOW,
        SKEW,
    )


def fold(requests: list[OptOutRequest]) -> dict[Key, StateEntry]:
    state: dict[Key, StateEntry] = {}
    for r in requests:
        apply(state, decide(state, r))
    return state


def newest_wins_directly(requests: list[OptOutRequest]) -> dict[Key, tuple[bool, datetime, str]]:
    """The rule as the contract states it, computed without the fold: per subject and
    concrete scope, the newest requested_at; on a tie the opt-out; then the event id."""
    best: dict[Key, tuple[datetime, bool, str]] = {}
    for r in requests:
        for subject in subjects_of(r):
            for scope in concrete_scopes(r.scopes):
                mine = (r.requested_at, r.action is Action.OPT_OUT, r.event_id)
                if (subject, scope) not in best or mine > best[(subject, scope)]:
                    best[(subject, scope)] = mine
    return {k: (v[1], v[0], v[2]) for k, v in best.items()}


def summary(state: dict[Key, StateEntry]) -> dict[Key, tuple[bool, datetime, str]]:
    return {k: (e.suppressed, e.since, e.event_id) for k, e in state.items()}


SCOPE_CHOICES = st.lists(st.sampled_from([s.value for s in Scope]), min_size=1, max_size=3, unique=True)
ONE = st.tuples(st.sampled_from(list(Action)), SCOPE_CHOICES, st.integers(0, 4), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(ONE, min_size=1, max_size=10), st.randoms(use_true_random=False))
def test_any_order_gives_the_same_state(items, rng):
    # Same person; some requests also carry the customer id (a second subject); times in
    # a narrow range so that ties are frequent.
    requests = [
        request(n, action, scopes, minutes, customer_id="c-1" if with_cust else None)
        for n, (action, scopes, minutes, with_cust) in enumerate(items)
    ]
    expected = newest_wins_directly(requests)
    assert summary(fold(requests)) == expected
    for _ in range(3):
        shuffled = list(requests)
        rng.shuffle(shuffled)
        assert summary(fold(shuffled)) == expected
    assert summary(newest_per_key(requests)) == expected


def test_a_stale_opt_in_changes_nothing():
    out = request(1, Action.OPT_OUT, ["ALL"], minutes_ago=1)
    stale_in = request(2, Action.OPT_IN, ["EMAIL_MARKETING"], minutes_ago=5)
    state = fold([out])
    decision = decide(state, stale_in)
    assert decision.changes == () and decision.superseded


def test_on_a_tie_the_opt_out_wins_whatever_the_order():
    out = request(1, Action.OPT_OUT, ["EMAIL_MARKETING"], minutes_ago=2)
    back_in = request(2, Action.OPT_IN, ["EMAIL_MARKETING"], minutes_ago=2)
    for order in ([out, back_in], [back_in, out]):
        state = fold(order)
        assert all(e.suppressed for e in state.values())
    assert decide(fold([out]), back_in).superseded
    assert decide(fold([back_in]), out).effective == {Scope.EMAIL_MARKETING}


def test_out_in_out_ends_suppressed_and_each_takes_effect():
    sequence = [
        request(1, Action.OPT_OUT, ["ALL"], minutes_ago=3),
        request(2, Action.OPT_IN, ["EMAIL_MARKETING"], minutes_ago=2),
        request(3, Action.OPT_OUT, ["EMAIL_MARKETING"], minutes_ago=1),
    ]
    state: dict[Key, StateEntry] = {}
    effects = []
    for r in sequence:
        d = decide(state, r)
        apply(state, d)
        effects.append(d.effective)
    assert effects == [frozenset(CONCRETE_SCOPES), {Scope.EMAIL_MARKETING}, {Scope.EMAIL_MARKETING}]
    assert all(e.suppressed for e in state.values())


def test_an_opt_in_for_all_partly_stale_wins_only_where_newer():
    out = request(1, Action.OPT_OUT, ["POSTAL_MARKETING"], minutes_ago=1)
    back_in = request(2, Action.OPT_IN, ["ALL"], minutes_ago=5)
    d = decide(fold([out]), back_in)
    assert d.effective == frozenset(CONCRETE_SCOPES) - {Scope.POSTAL_MARKETING}


def test_an_opt_in_needs_every_identifier_a_newer_opt_out_by_one_keeps_it():
    by_email = request(1, Action.OPT_OUT, ["EMAIL_MARKETING"], minutes_ago=1)
    back_in = request(2, Action.OPT_IN, ["EMAIL_MARKETING"], minutes_ago=3, customer_id="c-9")
    d = decide(fold([by_email]), back_in)
    assert d.superseded  # the email's newer opt-out keeps the person suppressed
    assert [c.subject for c in d.changes] == ["cust:c-9"]  # the customer id's own state moves
    # An opt-out wins when it is newest for one of its identifiers.
    old_out = request(3, Action.OPT_OUT, ["EMAIL_MARKETING"], minutes_ago=9, customer_id="c-9")
    assert decide(fold([back_in]), old_out).superseded  # older than the opt-in on both
    assert effective_scopes(old_out, {("cust:c-9", Scope.EMAIL_MARKETING): True}) == {Scope.EMAIL_MARKETING}


def test_an_older_opt_out_after_a_newer_one_still_takes_effect():
    newer = request(1, Action.OPT_OUT, ["EMAIL_MARKETING"], minutes_ago=1)
    older = request(2, Action.OPT_OUT, ["ALL"], minutes_ago=5)
    d = decide(fold([newer]), older)
    assert d.effective == frozenset(CONCRETE_SCOPES)  # re-sending an opt-out is harmless
    assert {c.scope for c in d.changes} == set(CONCRETE_SCOPES) - {Scope.EMAIL_MARKETING}


def test_subjects_are_hashed_identifiers():
    r = request(1, Action.OPT_OUT, ["ALL"], minutes_ago=1, customer_id="c-1")
    subjects = subjects_of(r)
    assert subjects[0] == "cust:c-1"
    assert subjects[1].startswith("email_sha256:") and "example" not in subjects[1]
