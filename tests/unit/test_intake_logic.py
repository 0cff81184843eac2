from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.contract import Destination, Destinations, Identifier, Scope
from services.common.destinations import load_destinations
from services.common.errors import PoisonMessage
from services.domain.planning import applicable_destinations, command_id, plan_commands
from services.domain.validation import validate_request

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
ADDRESS = {
    "name": "Jane  Doe",
    "lines": ["1 Main St", " "],
    "city": "Springfield",
    "region": "il",
    "postal_code": "62701",
    "country": "us",
}


DEFAULT = load_destinations()  # deploy/destinations.toml: today's three destinations


def record(**overrides):
    base = {
        "event_id": "evt-1",
        "customer_id": None,
        "email": "Jane@Example.com",
        "phone": None,
        "postal_address": None,
        "scopes": ["EMAIL_MARKETING"],
        "source": "API",
        "jurisdiction": None,
        "requested_at": NOW - timedelta(minutes=1),
    }
    base.update(overrides)
    return base


def test_valid_request_is_normalized_and_hashed():
    r = validate_request(record(phone="(415) 555-0123", postal_address=ADDRESS), NOW, SKEW)
    assert r.email == "jane@example.com"
    assert r.phone == "+14155550123"
    assert r.postal_address["name"] == "Jane Doe"
    assert r.postal_address["lines"] == ["1 Main St"]
    assert r.postal_address["country"] == "US"
    assert r.email_sha256 and len(r.email_sha256) == 64
    assert r.subject_key == "email_sha256:" + r.email_sha256
    assert r.due_at == r.requested_at + timedelta(hours=48)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"email": None}, "no_identifier"),
        ({"email": "not-an-email"}, "invalid_email"),
        ({"phone": "12"}, "invalid_phone"),
        ({"scopes": []}, "empty_scopes"),
        ({"requested_at": NOW + timedelta(hours=1)}, "requested_at_in_future"),
        ({"event_id": ""}, "invalid_event_id"),
        ({"customer_id": "a\x00b"}, "invalid_characters"),
        ({"customer_id": "x" * 10_000}, "field_too_long"),
        ({"postal_address": {**ADDRESS, "country": "USA"}}, "invalid_postal_address"),
    ],
)
def test_bad_requests_are_poison_with_reason(overrides, reason):
    with pytest.raises(PoisonMessage) as info:
        validate_request(record(**overrides), NOW, SKEW)
    assert info.value.reason == reason


def test_requested_at_within_skew_and_far_past_are_accepted():
    validate_request(record(requested_at=NOW + timedelta(minutes=4)), NOW, SKEW)
    old = validate_request(record(requested_at=datetime(2001, 1, 1, tzinfo=UTC)), NOW, SKEW)
    assert old.due_at < NOW


def test_content_hash_ignores_spelling_but_not_substance():
    a = validate_request(record(email="JANE@example.com "), NOW, SKEW)
    b = validate_request(record(email="jane@example.com", requested_at=NOW), NOW, SKEW)
    c = validate_request(record(email="other@example.com"), NOW, SKEW)
    assert a.content_sha256 == b.content_sha256 != c.content_sha256


def test_routing_all_reaches_every_destination_with_identifiers():
    r = validate_request(record(scopes=["ALL"], postal_address=ADDRESS, phone="+1 415 555 0100"), NOW, SKEW)
    assert [d.id for d in applicable_destinations(r, DEFAULT)] == DEFAULT.names


def test_all_skips_destinations_without_identifiers():
    r = validate_request(record(scopes=["ALL"]), NOW, SKEW)
    assert [d.id for d in applicable_destinations(r, DEFAULT)] == ["email_provider", "third_party_sharing"]


def test_explicit_scope_without_identifier_is_poison():
    r = validate_request(record(scopes=["POSTAL_MARKETING"]), NOW, SKEW)
    with pytest.raises(PoisonMessage) as info:
        applicable_destinations(r, DEFAULT)
    assert info.value.reason == "missing_identifier_for_scope"


def test_commands_carry_only_what_each_destination_needs():
    r = validate_request(
        record(scopes=["ALL"], phone="+14155550123", postal_address=ADDRESS, customer_id="c-9"),
        NOW,
        SKEW,
    )
    commands = {c.destination: c.record for c in plan_commands(r, NOW, DEFAULT)}
    assert commands["email_provider"]["email"] == "jane@example.com"
    assert commands["email_provider"]["postal_address"] is None
    assert commands["mail_house"]["postal_address"]["city"] == "Springfield"
    assert commands["mail_house"]["email"] is None
    third = commands["third_party_sharing"]
    assert third["email"] is None and third["phone"] is None
    assert third["email_sha256"] == r.email_sha256 and third["phone_sha256"] == r.phone_sha256
    assert all(c["deadline"] == int(r.due_at.timestamp() * 1000) for c in commands.values())


def test_command_id_is_deterministic_per_event_and_destination():
    assert command_id("e", "mail_house") == command_id("e", "mail_house")
    assert command_id("e", "mail_house") != command_id("e", "email_provider")
    assert command_id("e", "mail_house") != command_id("f", "mail_house")


@given(
    st.fixed_dictionaries(
        {
            "event_id": st.text(max_size=30),
            "customer_id": st.none() | st.text(max_size=30),
            "email": st.none() | st.text(max_size=40) | st.emails(),
            "phone": st.none() | st.text(max_size=20),
            "scopes": st.lists(st.sampled_from([s.value for s in Scope]), max_size=4),
            "jurisdiction": st.none() | st.text(max_size=8),
        }
    )
)
def test_validation_either_accepts_or_gives_a_reason(fields):
    try:
        r = validate_request(record(**fields), NOW, SKEW)
    except PoisonMessage as exc:
        assert exc.reason
        return
    assert r.scopes and (r.customer_id or r.email or r.phone)
    try:
        plan_commands(r, NOW, DEFAULT)
    except PoisonMessage as exc:
        assert exc.reason in ("missing_identifier_for_scope", "no_destination_for_scope")


def _email(name: str) -> Destination:
    return Destination(
        id=name,
        kind="email_provider",
        scopes=frozenset({Scope.EMAIL_MARKETING}),
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL}),
        requires_one_of=frozenset({Identifier.EMAIL}),
    )


def test_two_email_destinations_both_get_a_command():
    two = Destinations([_email("esp_a"), _email("esp_b")])
    r = validate_request(record(scopes=["EMAIL_MARKETING"]), NOW, SKEW)
    planned = plan_commands(r, NOW, two)
    assert [c.destination for c in planned] == ["esp_a", "esp_b"]
    assert len({c.command_id for c in planned}) == 2
    assert all(c.record["email"] == "jane@example.com" for c in planned)


def test_no_email_destination_all_skips_it_and_an_explicit_scope_is_dead_lettered():
    no_email = Destinations(d for d in DEFAULT if d.id != "email_provider")
    r = validate_request(record(scopes=["ALL"], customer_id="c-1"), NOW, SKEW)
    assert [d.id for d in applicable_destinations(r, no_email)] == ["third_party_sharing"]
    explicit = validate_request(record(scopes=["EMAIL_MARKETING", "THIRD_PARTY_SHARING"]), NOW, SKEW)
    with pytest.raises(PoisonMessage) as info:
        applicable_destinations(explicit, no_email)
    assert info.value.reason == "no_destination_for_scope"
    assert "EMAIL_MARKETING" in info.value.detail
    assert no_email.unserved_scopes() == [Scope.EMAIL_MARKETING]


def test_command_id_is_the_rfc4122_uuid5_of_event_and_destination():
    import uuid

    from services.domain.planning import COMMAND_NAMESPACE

    for event_id, dest in [("e", "mail_house"), ("ünïcode-€", "email_provider"), ("", "x")]:
        assert command_id(event_id, dest) == str(uuid.uuid5(COMMAND_NAMESPACE, f"{event_id}\x1f{dest}"))
