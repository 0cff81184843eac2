"""Intake's per-event shortcuts (issue #15) give exactly what the plain computations give."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.common import generate_events
from services.common.contract import Scope
from services.domain.deadlines import deadline_of, governing_rule_of
from services.domain.identity import normalize_email, sha256_hex
from services.domain.preferences import newest_per_key, proposed, wins
from services.domain.validation import postal_key, validate_request
from services.suppression.entries import entries_of, identifier_entries

SCOPE_SETS = st.lists(st.sampled_from(list(Scope)), min_size=1, max_size=3).map(
    lambda s: tuple(sorted(set(s)))
)
JURISDICTIONS = st.sampled_from([None, "US", "US-CA", "us-ca ", "CA", "CA-QC", "DE", "EU", "GB", "BR", ""])
MOMENTS = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime(2030, 12, 31),
    timezones=st.sampled_from([UTC, ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")]),
)


@settings(max_examples=400, deadline=None)
@given(moment=MOMENTS, scopes=SCOPE_SETS, jurisdiction=JURISDICTIONS)
def test_the_deadline_cached_per_day_is_the_rule_computed_for_the_moment(
    moment: datetime, scopes: tuple[Scope, ...], jurisdiction: str | None
) -> None:
    rule = governing_rule_of(moment, scopes, jurisdiction)
    assert deadline_of(moment, scopes, jurisdiction) == (rule, rule.due(moment))


@given(st.text(max_size=30))
def test_the_ascii_shortcut_of_email_normalization_changes_nothing(local: str) -> None:
    raw = f" {local}@Example.COM "
    expected = unicodedata.normalize("NFC", raw.strip()).lower()
    try:
        assert normalize_email(raw) == expected
    except Exception as exc:  # refused either way: the same reason as before
        assert type(exc).__name__ == "PoisonMessage"


def _requests() -> list:
    now = datetime.now(UTC)
    return [validate_request(e.record, now, timedelta(seconds=300)) for e in generate_events(400, 3)]


def test_newest_per_key_is_proposed_changes_kept_by_wins() -> None:
    requests = _requests()
    expected: dict = {}
    for request in requests + requests[:50]:
        for change in proposed(request):
            key = (change.subject, change.scope)
            if wins(change.entry, expected.get(key)):
                expected[key] = change.entry
    assert newest_per_key(requests + requests[:50]) == expected


def test_subjects_and_entries_use_the_hashes_validation_computed() -> None:
    for request in _requests():
        assert entries_of(request) == identifier_entries(request.email, request.phone, request.postal_address)
        key = postal_key(request.postal_address)
        assert request.postal_sha256 == (sha256_hex(key) if key else None)
