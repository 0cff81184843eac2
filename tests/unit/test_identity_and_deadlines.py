from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.contract import Scope
from services.common.errors import PoisonMessage
from services.domain.deadlines import add_business_days, add_months, due_at, governing_rule
from services.domain.identity import mask_email, normalize_email, normalize_phone, sha256_hex


def test_email_is_trimmed_and_lower_cased():
    assert normalize_email("  Jane.Doe@Example.COM ") == "jane.doe@example.com"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "no-at",
        "a@b",
        "a@@b.com",
        "a b@c.com",
        "@x.com",
        "a@-x.com",
        "a..b@x.com",
        "x" * 65 + "@x.com",
        "a@x.com'; DROP TABLE x;--@y",
    ],
)
def test_invalid_emails_are_poison(bad):
    with pytest.raises(PoisonMessage) as info:
        normalize_email(bad)
    assert info.value.reason == "invalid_email"


def test_phone_is_e164():
    assert normalize_phone("(415) 555-0123") == "+14155550123"
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"


@pytest.mark.parametrize("bad", ["", "12", "call me", "+1 555", "☎☎☎"])
def test_invalid_phones_are_poison(bad):
    with pytest.raises(PoisonMessage) as info:
        normalize_phone(bad)
    assert info.value.reason == "invalid_phone"


def test_hash_is_sha256_of_normalized_value():
    # FIPS 180-2 test vector.
    assert sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_mask_email_hides_most_characters():
    masked = mask_email("jane.doe@example.com")
    assert masked.startswith("j") and masked.endswith(".com")
    assert "jane" not in masked and "example" not in masked


@given(st.text(max_size=80))
def test_normalize_email_never_crashes_and_is_idempotent(text):
    try:
        once = normalize_email(text)
    except PoisonMessage:
        return
    assert normalize_email(once) == once
    assert once == once.strip().lower()


@given(st.text(max_size=40))
def test_normalize_phone_never_crashes_and_is_idempotent(text):
    try:
        once = normalize_phone(text)
    except PoisonMessage:
        return
    assert once.startswith("+")
    assert normalize_phone(once) == once


FRIDAY = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def test_business_days_skip_weekends():
    assert add_business_days(FRIDAY, 1) == datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # Monday
    assert add_business_days(FRIDAY, 10) == datetime(2026, 12, 11, 15, 0, tzinfo=UTC)


def test_add_months_clamps_to_month_end():
    assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)


def test_email_marketing_is_due_in_48_hours_anywhere():
    assert due_at(FRIDAY, [Scope.EMAIL_MARKETING], "US-CA") == FRIDAY + timedelta(hours=48)
    assert governing_rule(FRIDAY, [Scope.ALL], None) == "mailbox-providers-48h"


def test_ccpa_and_gdpr_for_non_email_scopes():
    assert due_at(FRIDAY, [Scope.THIRD_PARTY_SHARING], "US-CA") == add_business_days(FRIDAY, 15)
    assert due_at(FRIDAY, [Scope.POSTAL_MARKETING], "EU") == datetime(2026, 12, 27, 15, 0, tzinfo=UTC)
    assert governing_rule(FRIDAY, [Scope.POSTAL_MARKETING], "DE") == "GDPR"
    assert governing_rule(FRIDAY, [Scope.POSTAL_MARKETING], None) == "default"


def _business_days_one_by_one(start, days):
    moment = start
    while days > 0:
        moment += timedelta(days=1)
        if moment.weekday() < 5:
            days -= 1
    return moment


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=0, max_value=400),
)
def test_business_days_closed_form_matches_counting_day_by_day(start, days):
    start = start.replace(tzinfo=UTC)
    assert add_business_days(start, days) == _business_days_one_by_one(start, days)


@pytest.mark.parametrize(
    ("jurisdiction", "rule"), [("US", "TCPA"), ("US-NY", "TCPA"), ("CA", "CASL"), ("CA-QC", "CASL")]
)
def test_sms_marketing_is_due_in_10_business_days_in_the_us_and_canada(jurisdiction, rule):
    assert due_at(FRIDAY, [Scope.SMS_MARKETING], jurisdiction) == add_business_days(FRIDAY, 10)
    assert governing_rule(FRIDAY, [Scope.SMS_MARKETING], jurisdiction) == rule


def test_sms_marketing_elsewhere_follows_the_general_rules():
    assert governing_rule(FRIDAY, [Scope.SMS_MARKETING], "DE") == "GDPR"
    assert governing_rule(FRIDAY, [Scope.SMS_MARKETING], None) == "default"
