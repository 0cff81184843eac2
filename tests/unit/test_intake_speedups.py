"""Intake's per-event shortcuts (issue #15) give exactly what the plain computations give."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.common import generate_events
from services.common.avro import default_codec
from services.common.contract import Identifier, Scope
from services.domain.deadlines import deadline_of, governing_rule_of
from services.domain.identity import normalize_email, sha256_hex
from services.domain.preferences import newest_per_key, proposed, wins
from services.domain.validation import postal_key, validate_request
from services.suppression.entries import entries_of, identifier_entries
from tests.support.hostile_text import HOSTILE

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


# --- array literals (services/common/arrays.py) --------------------------------------------------
def _read_text_array(literal: str) -> list[str | None]:
    """A reader of one-dimensional ``text[]`` literals as PostgreSQL's array_in reads them
    (the database itself checks the same in tests/integration/test_intake_arrays.py)."""
    assert literal[0] == "{" and literal[-1] == "}"
    body, values, i = literal[1:-1], [], 0
    if not body:
        return []
    while True:
        if body[i] == '"':
            i += 1
            chars = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            values.append("".join(chars))
            i += 1
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            token = body[i:end]
            assert token and not any(c in token for c in '{}"\\ \t\n\r\v\f'), token
            values.append(None if token.lower() == "null" else token)
            i = end
        if i == len(body):
            return values
        assert body[i] == ","
        i += 1


TEXTS = st.lists(st.one_of(st.none(), st.sampled_from(HOSTILE), st.text(max_size=12)), max_size=12)


@settings(max_examples=500, deadline=None)
@given(TEXTS)
def test_a_text_array_literal_reads_back_as_the_values(values: list[str | None]) -> None:
    from services.common.arrays import text_array

    assert _read_text_array(text_array(values)) == values


def test_plain_values_are_joined_unquoted_and_anything_else_quoted() -> None:
    from services.common.arrays import bool_array, int_array, text_array

    assert text_array(["ab12", None, "5f0c-9e"]) == "{ab12,NULL,5f0c-9e}"
    assert text_array([]) == "{}" and text_array([None]) == "{NULL}"
    assert text_array(["a", ""]) == '{"a",""}'
    assert text_array(["x", "NuLl"]) == '{"x","NuLl"}'
    assert text_array(['say "hi"', None, "c:\\"]) == '{"say \\"hi\\"",NULL,"c:\\\\"}'
    assert int_array([1, 20, -3]) == "{1,20,-3}" and int_array([]) == "{}"
    assert bool_array([True, False]) == "{t,f}"


# --- the subject states' encoder (services/intake/states.py) --------------------------------------
STATE_ROWS = st.lists(
    st.tuples(
        st.sampled_from([*(s.value for s in Scope if s is not Scope.ALL), "FUTURE_SCOPE"]),
        st.booleans(),
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
        st.text(max_size=400),  # past one and two varint bytes of length
        st.sampled_from(["OPT_OUT", "OPT_IN"]),
    ),
    max_size=5,
    unique_by=lambda row: row[0],
)


@settings(max_examples=400, deadline=None)
@given(subject=st.text(max_size=80), rows=STATE_ROWS, now=MOMENTS)
def test_the_state_encoder_writes_what_the_codec_writes_for_the_state_record(
    subject: str, rows: list[tuple[str, bool, datetime, str, str]], now: datetime
) -> None:
    from services.domain.subjects import ScopeState, ordered, state_record
    from services.intake.states import state_encoder

    codec = default_codec()
    states = ordered(ScopeState(*row) for row in rows)  # the statement's order
    record = state_record(subject, states, now)
    expected = None if record is None else codec.encode("SuppressionState", record)
    in_order = [(subject, s.scope, s.suppressed, s.since, s.request_id, s.action) for s in states]
    assert state_encoder(codec)(subject, in_order, now) == expected


def test_a_newer_state_schema_is_written_through_the_codec(tmp_path: Path) -> None:
    from services.common.avro import Codec, schemas_dir
    from services.domain.subjects import ScopeState, state_record
    from services.intake.states import state_encoder

    for source in schemas_dir().glob("*.avsc"):
        (tmp_path / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    v2 = json.loads((schemas_dir() / "SuppressionState.v1.avsc").read_text(encoding="utf-8"))
    v2["namespace"] = "dev.optout.v2"
    v2["fields"].append({"name": "note", "type": "string", "default": "v2"})
    (tmp_path / "SuppressionState.v2.avsc").write_text(json.dumps(v2), encoding="utf-8")
    codec = Codec(tmp_path)
    at = datetime(2026, 12, 1, tzinfo=UTC)
    row = ("email_sha256:ab", "EMAIL_MARKETING", True, at, "e-1", "OPT_OUT")
    record = state_record("email_sha256:ab", [ScopeState(*row[1:])], at)
    assert record is not None
    assert state_encoder(codec)("email_sha256:ab", [row], at) == codec.encode("SuppressionState", record)
    # and not the version 1 bytes the shortcut writes
    assert state_encoder(codec)("email_sha256:ab", [row], at) != state_encoder(default_codec())(
        "email_sha256:ab", [row], at
    )


@settings(max_examples=200, deadline=None)
@given(
    scopes=SCOPE_SETS, served=st.lists(st.sampled_from([s for s in Scope if s is not Scope.ALL]), max_size=3)
)
def test_routing_computed_once_per_scopes_is_the_plain_routing(
    scopes: tuple[Scope, ...], served: list[Scope]
) -> None:
    from services.common.contract import Destination, Destinations
    from services.common.settings import Settings
    from services.domain.planning import _routing

    for destinations in (
        Settings().destinations,
        Destinations(
            Destination(f"d{i}", frozenset({s}), frozenset({Identifier.EMAIL}), frozenset({Identifier.EMAIL}))
            for i, s in enumerate(served)
        ),
    ):
        plain_unserved: list[str] = []
        if Scope.ALL not in scopes:
            covered = {s for d in destinations for s in d.scopes}
            plain_unserved = sorted(s.value for s in scopes if s not in covered)
        for _ in range(2):  # computed, then cached
            routed, unserved = _routing(destinations, scopes)
            assert list(routed) == destinations.for_scopes(scopes)
            assert list(unserved) == plain_unserved


def _parsed_e164(text: str, region: str) -> str | None:
    """The plain computation: phonenumbers' parse, possibility check and E.164 format."""
    import phonenumbers

    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@settings(max_examples=2000, deadline=None)
@given(
    digits=st.text(alphabet="0123456789", min_size=10, max_size=10),
    region=st.sampled_from(["US", "CA", "GB", "DE", "FR", "IN", "BR", "JP", "ZZ"]),
    pad=st.sampled_from(["", " ", "\t", "  \n"]),
)
def test_a_nanp_e164_number_is_returned_as_phonenumbers_would_format_it(
    digits: str, region: str, pad: str
) -> None:
    from services.domain.identity import is_nanp_e164, normalize_phone

    text = "+1" + digits
    assert is_nanp_e164(text)
    assert normalize_phone(pad + text + pad, region) == text == _parsed_e164(text, region)


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet="+0123456789\u0661\u0662 -()", min_size=1, max_size=16))
def test_the_nanp_shortcut_takes_nothing_else(text: str) -> None:
    from services.domain.identity import is_nanp_e164

    if is_nanp_e164(text):
        assert text[:2] == "+1" and len(text) == 12 and all(c in "0123456789" for c in text[2:])
        assert _parsed_e164(text, "US") == text


IDENTIFIER_SETS = st.frozensets(st.sampled_from(list(Identifier)))


@settings(max_examples=400, deadline=None)
@given(
    scopes=SCOPE_SETS,
    has=st.fixed_dictionaries(
        {k: st.booleans() for k in ("customer_id", "email", "phone", "postal_address", "device_id")}
    ),
    requires=st.lists(IDENTIFIER_SETS, min_size=1, max_size=4),
)
def test_destinations_chosen_by_bit_mask_are_those_the_identifier_values_choose(
    scopes: tuple[Scope, ...], has: dict[str, bool], requires: list[frozenset[Identifier]]
) -> None:
    """``applicable_destinations`` of a request without enrichment (bit masks) chooses and
    refuses exactly as the plain check of ``_identifier_values`` does."""
    import dataclasses

    from services.common.contract import Destination, Destinations
    from services.common.errors import PoisonMessage
    from services.common.settings import Settings
    from services.domain.planning import _identifier_values, _routing, applicable_destinations

    base = validate_request(
        {
            "event_id": "e-1",
            "customer_id": "C-1",
            "email": "a@example.com",
            "phone": "+12025550123",
            "postal_address": {
                "name": "A B",
                "lines": ["1 Main St"],
                "city": "Springfield",
                "region": None,
                "postal_code": "12345",
                "country": "US",
            },
            "device_id": "dev-1",
            "scopes": [s.value for s in scopes],
            "requested_at": datetime(2026, 1, 1, tzinfo=UTC),
        },
        datetime(2026, 1, 2, tzinfo=UTC),
        timedelta(seconds=60),
    )
    request = dataclasses.replace(base, **{k: getattr(base, k) if v else None for k, v in has.items()})

    def plain(destinations: Destinations) -> list[str] | str:
        routed, unserved = _routing(destinations, request.scopes)
        if unserved:
            return "no_destination_for_scope"
        values = _identifier_values(request)
        chosen = []
        for dest in routed:
            if any(values[i] for i in dest.requires_one_of):
                chosen.append(dest.id)
            elif Scope.ALL not in request.scopes:
                return f"missing {dest.id}"
        return chosen or "missing none"

    def fast(destinations: Destinations) -> list[str] | str:
        try:
            return [d.id for d in applicable_destinations(request, destinations)]
        except PoisonMessage as poison:
            if poison.reason == "no_destination_for_scope":
                return poison.reason
            return f"missing {poison.detail.split(' ')[0]}" if "needs" in poison.detail else "missing none"

    concrete = [s for s in Scope if s is not Scope.ALL]
    made = Destinations(
        Destination(f"d{i}", frozenset({concrete[i % len(concrete)]}), frozenset(Identifier), r)
        for i, r in enumerate(requires)
    )
    for destinations in (Settings().destinations, made):
        assert fast(destinations) == plain(destinations)


@settings(max_examples=300, deadline=None)
@given(
    people=st.lists(
        st.tuples(
            st.sampled_from([None, "C-1", "C-2", "C-3"]),
            st.sampled_from([None, "a@example.com", "b@example.com"]),
            SCOPE_SETS,
            st.sampled_from(["OPT_OUT", "OPT_IN"]),
            st.integers(min_value=0, max_value=3),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_effective_scopes_when_the_chunk_won_every_row_are_the_plain_ones(
    people: list[tuple[str | None, str | None, tuple[Scope, ...], str, int]],
) -> None:
    """``effective_when_all_won`` (no two requests of the chunk share a row) gives what
    ``effective_scopes`` gives with the chunk's winners applied, and declines otherwise."""
    from services.domain.preferences import effective_scopes
    from services.intake.store import effective_when_all_won

    start = datetime(2026, 1, 1, tzinfo=UTC)
    requests = [
        validate_request(
            {
                "event_id": f"e-{i}",
                "customer_id": customer,
                "email": email if email or customer else "z@example.com",
                "scopes": [s.value for s in scopes],
                "action": action,
                "requested_at": start + timedelta(minutes=minute),
            },
            start + timedelta(days=1),
            timedelta(seconds=60),
        )
        for i, (customer, email, scopes, action, minute) in enumerate(people)
    ]
    winners = newest_per_key(requests)
    after = {k: w.suppressed for k, w in winners.items()}
    got = effective_when_all_won(requests, len(winners))
    keys = [(s, c) for r in requests for s in r.subjects for c in proposed_scopes(r)]
    if len(keys) == len(set(keys)):
        assert got == {r.event_id: effective_scopes(r, after) for r in requests}
    else:
        assert got is None


def proposed_scopes(request: Any) -> tuple[Scope, ...]:
    from services.domain.preferences import concrete_scopes

    return concrete_scopes(request.scopes)


def _email_checks(raw: str) -> str | None:
    """The full checks of ``normalize_email`` with its shortcut switched off."""
    from unittest import mock

    from services.common.errors import PoisonMessage
    from services.domain import identity

    with mock.patch.object(identity, "_PLAIN_EMAIL", identity.re.compile(r"(?!)")):
        try:
            return identity.normalize_email(raw)
        except PoisonMessage:
            return None


EMAIL_PARTS = st.text(alphabet='abcXYZ019._%+-@ "\\é\u200b', min_size=0, max_size=12)


@settings(max_examples=3000, deadline=None)
@given(
    local=EMAIL_PARTS,
    domain=EMAIL_PARTS,
    tld=st.sampled_from(["com", "c0m", "-x", "x-", "", "co.uk", "a" * 64]),
)
def test_the_plain_email_shortcut_accepts_only_what_the_full_checks_return_unchanged(
    local: str, domain: str, tld: str
) -> None:
    from services.domain.identity import _PLAIN_EMAIL, normalize_email

    for raw in (f"{local}@{domain}.{tld}", f"{local}@{domain}", local, f"{local}.{domain}@{tld}"):
        full = _email_checks(raw)
        if _PLAIN_EMAIL.fullmatch(raw) and len(raw) <= 254:
            assert full == raw
        assert (normalize_email(raw) if full is not None else None) == full


def test_the_plain_email_shortcut_takes_the_generated_addresses() -> None:
    from services.domain.identity import _PLAIN_EMAIL

    emails = [e.record["email"] for e in generate_events(500) if e.record["email"]]
    plain = [e for e in emails if e.isascii()]  # the generator also writes names like josé
    assert len(plain) > len(emails) / 2 and all(_PLAIN_EMAIL.fullmatch(e) for e in plain)
    assert all(_email_checks(e) == e for e in emails)
