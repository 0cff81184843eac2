"""The shared AES-256-GCM primitive (services/common/sealing.py): pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.contract import Scope
from services.common.errors import ConfigurationError
from services.common.sealing import KeyRing, SealError, b64decode, b64encode, generate_key, kid_of, parse_keys
from services.web.tokens import Purpose, make_claims, mint, verify

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
CONTEXT = b"optout-test/1/email/abc/"


def test_round_trip_carries_the_kid_and_hides_the_plaintext():
    ring = KeyRing({"a": KEY_A}, "a")
    sealed = ring.seal(b"jane@example.com", CONTEXT)
    assert sealed.startswith("a.") and kid_of(sealed) == "a"
    assert b"jane" not in b64decode(sealed.split(".", 1)[1])
    kid, nonce, plaintext = ring.open(sealed, CONTEXT)
    assert (kid, plaintext, len(nonce)) == ("a", b"jane@example.com", 12)


def test_each_seal_uses_a_fresh_nonce():
    ring = KeyRing({"a": KEY_A}, "a")
    assert ring.seal(b"x", CONTEXT) != ring.seal(b"x", CONTEXT)


def test_an_unknown_kid_is_refused():
    sealed = KeyRing({"a": KEY_A}, "a").seal(b"x", CONTEXT)
    with pytest.raises(SealError) as err:
        KeyRing({"b": KEY_A}, "b").open(sealed, CONTEXT)
    assert err.value.reason == "unknown_key"


def test_a_value_relabelled_with_another_kid_is_forged_even_with_the_same_key():
    ring = KeyRing({"a": KEY_A, "b": KEY_A}, "a")
    sealed = ring.seal(b"x", CONTEXT)
    with pytest.raises(SealError) as err:
        ring.open("b." + sealed.split(".", 1)[1], CONTEXT)
    assert err.value.reason == "forged"


def test_another_key_under_the_same_kid_is_forged():
    sealed = KeyRing({"a": KEY_B}, "a").seal(b"x", CONTEXT)
    with pytest.raises(SealError) as err:
        KeyRing({"a": KEY_A}, "a").open(sealed, CONTEXT)
    assert err.value.reason == "forged"


def test_every_bit_flip_of_the_body_is_forged():
    ring = KeyRing({"a": KEY_A}, "a")
    kid, body = ring.seal(b"+14155550123", CONTEXT).split(".")
    raw = b64decode(body)
    for index in range(len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        with pytest.raises(SealError) as err:
            ring.open(f"{kid}.{b64encode(bytes(tampered))}", CONTEXT)
        assert err.value.reason == "forged"


def test_wrong_associated_data_is_forged():
    ring = KeyRing({"a": KEY_A}, "a")
    sealed = ring.seal(b"jane@example.com", b"suppression/email/h1/")
    with pytest.raises(SealError) as err:
        ring.open(sealed, b"suppression/email/h2/")
    assert err.value.reason == "forged"


def test_rotation_old_kids_keep_opening_new_values_use_the_current_kid():
    old = KeyRing({"k1": KEY_A}, "k1")
    before = old.seal(b"x", CONTEXT)
    rotated = KeyRing({"k1": KEY_A, "k2": KEY_B}, "k2")
    after = rotated.seal(b"x", CONTEXT)
    assert kid_of(after) == "k2"
    assert rotated.open(before, CONTEXT)[:3:2] == ("k1", b"x")
    assert rotated.open(after, CONTEXT)[:3:2] == ("k2", b"x")
    with pytest.raises(SealError) as err:
        KeyRing({"k2": KEY_B}, "k2").open(before, CONTEXT)
    assert err.value.reason == "unknown_key"


@pytest.mark.parametrize("value", ["", "a", "a.", ".AAAA", "a.b.c", "a.!!!", "bad kid.AAAA", "a.AAAA"])
def test_malformed_values(value):
    with pytest.raises(SealError) as err:
        KeyRing({"a": KEY_A}, "a").open(value, CONTEXT)
    assert err.value.reason in ("malformed", "unknown_key")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_only_ever_raises_seal_error(text):
    with pytest.raises(SealError):
        KeyRing({"a": KEY_A}, "a").open(text, CONTEXT)


def test_bad_key_configuration_names_the_setting():
    with pytest.raises(ConfigurationError, match="OPTOUT_X holds no key"):
        KeyRing({}, "a", setting="OPTOUT_X")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        KeyRing({"a": b"short"}, "a")
    with pytest.raises(ConfigurationError, match="OPTOUT_CUR 'b' is not in OPTOUT_X"):
        KeyRing({"a": KEY_A}, "b", setting="OPTOUT_X", current_setting="OPTOUT_CUR")
    with pytest.raises(ConfigurationError, match="OPTOUT_X is not valid JSON"):
        parse_keys("{nope", "OPTOUT_X")
    with pytest.raises(ConfigurationError, match="base64url"):
        parse_keys('{"a": "***"}', "OPTOUT_X")
    with pytest.raises(ConfigurationError, match="JSON object"):
        parse_keys("[]", "OPTOUT_X")
    assert len(parse_keys(f'{{"k": "{generate_key()}"}}', "OPTOUT_X")["k"]) == 32


def test_dev_key_is_reported():
    assert KeyRing({"a": KEY_A, "b": KEY_B}, "a", dev_key=KEY_B).uses_dev_key
    assert not KeyRing({"a": KEY_A}, "a", dev_key=KEY_B).uses_dev_key


def test_tokens_minted_before_the_primitive_was_shared_still_verify():
    """Known answer: minted by services/web/tokens.py before it used services/common/sealing
    (same key, nonce and claims). Links already sent keep working."""
    before = (
        "a.AAAAAAAAAAAAAAAAdZ7F_I8O9p8kitoXIg7Uu_5hNXESowNa8-qet_fdcXQrfdyeQJPWY3OmCZSsvgUrh2Qui1tdZN1yjA4"
        "ec1N60d9fDjrsa15wMYArn2xU5FOglKjRSQ"
    )
    ring = KeyRing({"a": KEY_A}, "a")
    claims = make_claims(
        Purpose.UNSUBSCRIBE,
        [Scope.EMAIL_MARKETING],
        customer_id="cust-42",
        email="jane@example.com",
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    assert mint(ring, claims, nonce=bytes(12)) == before
    assert verify(ring, before, datetime(2026, 1, 1, tzinfo=UTC), Purpose.UNSUBSCRIBE).claims == claims


def test_open_many_opens_what_open_opens_and_refuses_the_same_values():
    ring = KeyRing({"a": KEY_A, "b": KEY_B}, "b")
    old = KeyRing({"a": KEY_A}, "a").seal(b"first", CONTEXT + b"1")
    new = ring.seal(b"second", CONTEXT + b"2")
    assert ring.open_many([old, new], [CONTEXT + b"1", CONTEXT + b"2"]) == [b"first", b"second"]
    assert ring.open_many([], []) == []
    for value, context, reason in [
        (new, CONTEXT + b"1", "forged"),
        ("zz." + new.partition(".")[2], CONTEXT + b"2", "unknown_key"),
        ("b.A", CONTEXT, "malformed"),
        ("b.AAAA", CONTEXT, "malformed"),
        ("b.AA.AA", CONTEXT, "malformed"),
        ("b.!!!!", CONTEXT, "malformed"),
    ]:
        with pytest.raises(SealError) as err:
            ring.open_many([old, value], [CONTEXT + b"1", context])
        assert err.value.reason == reason, value


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_open_many_only_ever_raises_seal_error(text):
    with pytest.raises(SealError):
        KeyRing({"a": KEY_A}, "a").open_many([text], [CONTEXT])
