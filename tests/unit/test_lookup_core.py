"""The lookup API's pure core and the shared subject rules (services/domain/subjects.py):
identifiers to subjects exactly as intake makes them, answers from state rows, API keys,
and the compacted topic's value (a tombstone when nothing is suppressed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common.avro import default_codec
from services.common.contract import Scope
from services.common.records import decode_suppression_state
from services.domain.identity import sha256_hex
from services.domain.subjects import (
    BadIdentifier,
    IdentifierKind,
    ScopeState,
    state_record,
    states_of,
    subject_of,
)
from services.lookup import core

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OUT = ScopeState("EMAIL_MARKETING", True, AT, "e-out", "OPT_OUT")
IN = ScopeState("THIRD_PARTY_SHARING", False, AT, "e-in", "OPT_IN")


def test_subjects_are_intakes() -> None:
    email = sha256_hex("ada@example.com")
    assert subject_of(IdentifierKind.EMAIL, "  Ada@Example.COM ") == f"email_sha256:{email}"
    assert subject_of(IdentifierKind.EMAIL_SHA256, email.upper()) == f"email_sha256:{email}"
    phone = f"phone_sha256:{sha256_hex('+12025550143')}"
    assert subject_of(IdentifierKind.PHONE, "(202) 555-0143") == phone
    assert subject_of(IdentifierKind.PHONE, "+44 20 7946 0958", "GB").startswith("phone_sha256:")
    assert subject_of(IdentifierKind.CUSTOMER_ID, " c-1 ") == "cust:c-1"
    for kind, value, reason in (
        (IdentifierKind.EMAIL, "no-at-sign", "invalid_email"),
        (IdentifierKind.PHONE, "12", "invalid_phone"),
        (IdentifierKind.EMAIL_SHA256, "abc", "invalid_email_sha256"),
        (IdentifierKind.CUSTOMER_ID, " ", "empty_customer_id"),
    ):
        with pytest.raises(BadIdentifier) as caught:
            subject_of(kind, value)
        assert caught.value.reason == reason


def test_single_query_and_answers() -> None:
    query = core.parse_query({"email": "Ada@example.com", "scope": "email_marketing"}, "US")
    assert query.scope is Scope.EMAIL_MARKETING
    rows = {query.subject: [IN, OUT]}
    assert core.single_response(query, rows)["suppressed"] is True
    everything = core.single_response(core.Query(query.subject, None), rows)
    assert list(everything["scopes"]) == ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"]  # contract order
    opted_in = core.single_response(core.Query(query.subject, Scope.THIRD_PARTY_SHARING), rows)
    assert opted_in["suppressed"] is False
    assert opted_in["scopes"] == {
        "THIRD_PARTY_SHARING": {
            "suppressed": False,
            "since": AT.isoformat(),
            "request_id": "e-in",
            "action": "OPT_IN",
        }
    }
    never = core.single_response(query, {})
    assert (never["suppressed"], never["scopes"]) == (False, {})
    assert core.parse_query({"customer_id": "c", "scope": "ALL"}, "US").scope is None
    for bad, reason in (
        ({}, "one_identifier_needed"),
        ({"email": "a@b.co", "phone": "+12025550143"}, "one_identifier_needed"),
        ({"email": "a@b.co", "scope": "SOMETHING"}, "invalid_scope"),
        ({"mail": "a@b.co"}, "unknown_parameter"),
        ({"email": "a@@b.co"}, "invalid_email"),
    ):
        with pytest.raises(core.BadRequest) as caught:
            core.parse_query(bad, "US")
        assert caught.value.reason == reason
        assert "a@" not in str(caught.value.as_json())  # never echoes the value


def test_batch() -> None:
    batch = core.parse_batch(
        {
            "identifiers": [{"email": "a@b.co"}, {"email": "A@B.CO"}, {"phone": "x"}, "nope", {}],
            "scope": None,
        },
        "US",
    )
    assert len(batch.subjects) == 1  # one read per distinct subject
    answer = core.batch_response(batch, {batch.subjects[0]: [OUT]})
    assert [r.get("suppressed", r.get("error")) for r in answer["results"]] == [
        True,
        True,
        "invalid_phone",
        "invalid_identifier",
        "one_identifier_needed",
    ]
    assert answer["suppressed"] == 2
    with pytest.raises(core.BadRequest, match="too_many"):
        core.parse_batch({"identifiers": [{"customer_id": "c"}] * 1001}, "US")
    with pytest.raises(core.BadRequest, match="invalid_body"):
        core.parse_batch([{"customer_id": "c"}], "US")


def test_api_keys() -> None:
    keys = [b"first-key-0123456789", b"second-key-0123456789"]
    assert core.authorized(core.presented_key("Bearer first-key-0123456789", None), keys)
    assert core.authorized(core.presented_key(None, "second-key-0123456789"), keys)
    assert core.authorized(core.presented_key("bearer  second-key-0123456789 ", None), keys)
    for header, x_key in (
        (None, None),
        ("first-key-0123456789", None),  # no scheme
        ("Basic Zmlyc3Q=", None),
        ("Bearer first-key-012345678", None),
        (None, "first-key-0123456789x"),
    ):
        assert not core.authorized(core.presented_key(header, x_key), keys)
    assert not core.authorized("anything", [])


def test_topic_value_and_tombstone() -> None:
    codec = default_codec()
    record = state_record("email_sha256:ab", [IN, OUT], AT)
    assert record is not None
    decoded = decode_suppression_state(codec, codec.encode("SuppressionState", record))
    assert decoded["subject"] == "email_sha256:ab"
    assert states_of(decoded) == (OUT, IN)
    assert state_record("email_sha256:ab", [IN], AT) is None  # nothing suppressed: tombstone
    assert state_record("email_sha256:ab", [], AT) is None
