"""Unsubscribe/GPC tokens, request building, rate limiting and pages: pure, no broker."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.clock import ManualClock
from services.common.contract import Scope, Source
from services.common.errors import ConfigurationError, PoisonMessage
from services.common.settings import Settings
from services.web import pages
from services.web.links import mint_gpc_token, mint_link
from services.web.ratelimit import RateLimiter
from services.web.requests import (
    ChoiceError,
    FormError,
    gpc_fields,
    is_one_click,
    one_click_fields,
    page_fields,
    parse_choice,
    parse_form,
)
from services.web.tokens import (
    DEV_KEY,
    KeyRing,
    Purpose,
    TokenError,
    b64decode,
    b64encode,
    candidate_event_ids,
    generate_key,
    gpc_event_id,
    keyring_from_settings,
    make_claims,
    mint,
    parse_keys,
    request_event_id,
    verify,
)
from tests.support.pipeline import ADDRESS

NOW = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


def ring(current: str = "a", **keys: bytes) -> KeyRing:
    return KeyRing(keys or {"a": KEY_A}, current)


def claims(**overrides):
    values = {
        "customer_id": "cust-42",
        "email": "Jane.Doe@Example.com",
        "expires_at": NOW + timedelta(days=30),
    }
    values.update(overrides)
    scopes = values.pop("scopes", [Scope.EMAIL_MARKETING])
    purpose = values.pop("purpose", Purpose.UNSUBSCRIBE)
    return make_claims(purpose, scopes, **values)


# --- minting and verification ---------------------------------------------------


def test_round_trip_returns_the_normalized_claims():
    keys = ring()
    token = mint(
        keys,
        claims(
            scopes=["email_marketing", "THIRD_PARTY_SHARING"], postal_address=ADDRESS, jurisdiction="us-ca"
        ),
    )
    verified = verify(keys, token, NOW, Purpose.UNSUBSCRIBE)
    assert verified.kid == "a"
    assert verified.claims.customer_id == "cust-42"
    assert verified.claims.email == "jane.doe@example.com"
    assert verified.claims.scopes == (Scope.EMAIL_MARKETING, Scope.THIRD_PARTY_SHARING)
    assert verified.claims.postal_address == {**ADDRESS, "region": None}
    assert verified.claims.jurisdiction == "US-CA"
    assert verified.claims.expires_at == NOW + timedelta(days=30)
    assert verified.token_id.startswith("a.")


def test_token_reveals_nothing_but_the_key_id():
    token = mint(ring(), claims())
    assert re.fullmatch(r"a\.[A-Za-z0-9_-]+", token)
    raw = b64decode(token.split(".", 1)[1])
    for secret in (b"jane", b"example", b"cust-42", b"EMAIL"):
        assert secret not in raw.lower()
        assert secret.decode() not in token.lower()


def test_each_mint_is_a_new_token_with_a_new_id():
    keys = ring()
    first, second = mint(keys, claims()), mint(keys, claims())
    assert first != second
    assert (
        verify(keys, first, NOW, Purpose.UNSUBSCRIBE).token_id
        != verify(keys, second, NOW, Purpose.UNSUBSCRIBE).token_id
    )


def test_rotation_new_links_use_the_new_key_and_old_links_still_verify():
    old_ring = KeyRing({"k1": KEY_A}, "k1")
    old_token = mint(old_ring, claims())
    rotated = KeyRing({"k1": KEY_A, "k2": KEY_B}, "k2")
    new_token = mint(rotated, claims())
    assert new_token.startswith("k2.")
    assert verify(rotated, old_token, NOW, Purpose.UNSUBSCRIBE).kid == "k1"
    assert verify(rotated, new_token, NOW, Purpose.UNSUBSCRIBE).kid == "k2"
    # Once k1 is retired, its links stop working.
    retired = KeyRing({"k2": KEY_B}, "k2")
    with pytest.raises(TokenError) as err:
        verify(retired, old_token, NOW, Purpose.UNSUBSCRIBE)
    assert err.value.reason == "unknown_key"


def test_every_single_bit_flip_is_refused():
    keys = ring()
    token = mint(keys, claims())
    kid, body = token.split(".")
    raw = bytearray(b64decode(body))
    for index in range(len(raw)):
        for bit in (0, 7):
            tampered = bytearray(raw)
            tampered[index] ^= 1 << bit
            with pytest.raises(TokenError) as err:
                verify(keys, f"{kid}.{b64encode(bytes(tampered))}", NOW, Purpose.UNSUBSCRIBE)
            assert err.value.reason == "forged"


def test_a_token_relabelled_with_another_key_id_is_refused():
    keys = KeyRing({"a": KEY_A, "b": KEY_A}, "a")  # same key material, different kid
    token = mint(keys, claims())
    relabelled = "b." + token.split(".", 1)[1]
    with pytest.raises(TokenError) as err:
        verify(keys, relabelled, NOW, Purpose.UNSUBSCRIBE)
    assert err.value.reason == "forged"


def test_a_token_from_another_key_is_forged():
    theirs = KeyRing({"a": KEY_B}, "a")
    with pytest.raises(TokenError) as err:
        verify(ring(), mint(theirs, claims()), NOW, Purpose.UNSUBSCRIBE)
    assert err.value.reason == "forged"


def test_expiry_is_enforced_with_the_injected_clock():
    keys = ring()
    clock = ManualClock(NOW)
    token = mint(keys, claims(expires_at=NOW + timedelta(hours=1)))
    assert verify(keys, token, clock.now(), Purpose.UNSUBSCRIBE)
    clock.advance(timedelta(minutes=59, seconds=59))
    assert verify(keys, token, clock.now(), Purpose.UNSUBSCRIBE)
    clock.advance(timedelta(seconds=1))
    with pytest.raises(TokenError) as err:
        verify(keys, token, clock.now(), Purpose.UNSUBSCRIBE)
    assert err.value.reason == "expired"


def test_tokens_without_expiry_never_expire():
    keys = ring()
    token = mint(keys, claims(expires_at=None))
    assert verify(keys, token, NOW + timedelta(days=3650), Purpose.UNSUBSCRIBE).claims.expires_at is None


def test_purposes_do_not_mix():
    keys = ring()
    gpc = mint(keys, claims(purpose=Purpose.GPC, email=None))
    unsubscribe = mint(keys, claims())
    with pytest.raises(TokenError, match="wrong_purpose"):
        verify(keys, gpc, NOW, Purpose.UNSUBSCRIBE)
    with pytest.raises(TokenError, match="wrong_purpose"):
        verify(keys, unsubscribe, NOW, Purpose.GPC)
    assert verify(keys, gpc, NOW, Purpose.GPC).claims.scopes == (Scope.THIRD_PARTY_SHARING,)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "a.",
        ".abc",
        "a.b.c",
        "a.!!!!",
        "a b.abcd",
        "a." + "A" * 10,
        "x" * 40 + ".abc",
        "a." + "A" * 3000,
    ],
)
def test_malformed_tokens(token):
    with pytest.raises(TokenError) as err:
        verify(ring(), token, NOW, Purpose.UNSUBSCRIBE)
    assert err.value.reason in ("malformed", "unknown_key")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_input_only_ever_raises_token_error(text):
    with pytest.raises(TokenError):
        verify(ring(), text, NOW, Purpose.UNSUBSCRIBE)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_arbitrary_bodies_under_a_known_kid_are_refused(body):
    with pytest.raises(TokenError) as err:
        verify(ring(), f"a.{b64encode(body)}", NOW, Purpose.UNSUBSCRIBE)
    assert err.value.reason in ("malformed", "forged")


def test_claims_need_an_identifier_and_a_scope():
    with pytest.raises(PoisonMessage, match="no_identifier"):
        make_claims(Purpose.UNSUBSCRIBE, [Scope.ALL])
    with pytest.raises(PoisonMessage, match="empty_scopes"):
        make_claims(Purpose.UNSUBSCRIBE, [], email="a@example.com")
    with pytest.raises(PoisonMessage, match="invalid_email"):
        make_claims(Purpose.UNSUBSCRIBE, [Scope.ALL], email="not-an-email")
    with pytest.raises(PoisonMessage, match="no_identifier"):
        make_claims(Purpose.GPC, [Scope.ALL], email="a@example.com")


# --- keys and settings ------------------------------------------------------------


def test_key_ring_rejects_bad_configuration():
    with pytest.raises(ConfigurationError):
        KeyRing({}, "a")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        KeyRing({"a": b"short"}, "a")
    with pytest.raises(ConfigurationError, match="not in"):
        KeyRing({"a": KEY_A}, "b")
    with pytest.raises(ConfigurationError, match="must match"):
        KeyRing({"a.b": KEY_A}, "a.b")
    with pytest.raises(ConfigurationError, match="JSON"):
        parse_keys("{nope")
    with pytest.raises(ConfigurationError, match="base64url"):
        parse_keys('{"a": "***"}')


def test_generated_keys_are_random_32_byte_keys():
    first, second = generate_key(), generate_key()
    assert first != second
    assert len(b64decode(first)) == 32
    assert parse_keys(json.dumps({"k": first})) == {"k": b64decode(first)}


def test_settings_keys_and_the_dev_key_guard():
    default = Settings()
    assert keyring_from_settings(default).uses_dev_key
    assert b64decode(json.loads(default.web_token_keys.get_secret_value())["dev"]) == DEV_KEY
    with pytest.raises(ConfigurationError, match="dev-only"):
        keyring_from_settings(Settings(env="production"))
    real = generate_key()
    prod = Settings(env="production", web_token_keys=json.dumps({"2025a": real}), web_current_kid="2025a")
    keys = keyring_from_settings(prod)
    assert keys.kids == ["2025a"] and not keys.uses_dev_key
    with pytest.raises(ConfigurationError, match="https"):
        mint_link(prod, email="a@example.com")
    https = prod.model_copy(update={"web_public_url": "https://unsubscribe.example.org"})
    assert mint_link(https, email="a@example.com").url.startswith("https://unsubscribe.example.org/u/2025a.")


# --- event ids --------------------------------------------------------------------


def test_event_ids_are_deterministic_per_token_and_scope_set():
    keys = ring()
    token = verify(keys, mint(keys, claims()), NOW, Purpose.UNSUBSCRIBE)
    again = verify(keys, mint(keys, claims()), NOW, Purpose.UNSUBSCRIBE)
    email = request_event_id(token, [Scope.EMAIL_MARKETING])
    assert email == request_event_id(token, [Scope.EMAIL_MARKETING])
    assert request_event_id(token, [Scope.EMAIL_MARKETING, Scope.POSTAL_MARKETING]) == request_event_id(
        token, [Scope.POSTAL_MARKETING, Scope.EMAIL_MARKETING]
    )
    assert email != request_event_id(token, [Scope.ALL])
    assert email != request_event_id(again, [Scope.EMAIL_MARKETING])
    candidates = candidate_event_ids(token)
    assert len(candidates) == len(set(candidates)) == 2 ** len(Scope) - 1  # every non-empty scope set
    assert email in candidates and request_event_id(token, [Scope.ALL]) in candidates


def test_gpc_event_id_is_one_per_customer():
    assert gpc_event_id("c-1") == gpc_event_id("c-1")
    assert gpc_event_id("c-1") != gpc_event_id("c-2")


# --- request building ---------------------------------------------------------------


def verified(**overrides):
    keys = ring()
    return verify(keys, mint(keys, claims(**overrides)), NOW, Purpose.UNSUBSCRIBE)


def test_one_click_fields():
    token = verified(scopes=[Scope.EMAIL_MARKETING])
    fields = one_click_fields(token, NOW)
    assert fields["source"] == Source.ONE_CLICK.value
    assert fields["scopes"] == ["EMAIL_MARKETING"]
    assert fields["email"] == "jane.doe@example.com" and fields["customer_id"] == "cust-42"
    assert fields["event_id"] == request_event_id(token, [Scope.EMAIL_MARKETING])
    assert fields["requested_at"] == NOW


def test_page_fields_use_the_chosen_scopes_and_email_link_source():
    token = verified()
    form = parse_form(b"scope=THIRD_PARTY_SHARING&scope=EMAIL_MARKETING", "application/x-www-form-urlencoded")
    choice = parse_choice(form, token)
    fields = page_fields(token, choice, NOW)
    assert fields["source"] == Source.EMAIL_LINK.value
    assert fields["scopes"] == ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"]
    assert fields["event_id"] == request_event_id(token, choice.scopes)
    everything = parse_choice(parse_form(b"choice=all", ""), token)
    assert everything.scopes == (Scope.ALL,)


def test_choices_that_cannot_be_acted_on_are_explained():
    token = verified()
    with pytest.raises(ChoiceError, match="at least one"):
        parse_choice({}, token)
    with pytest.raises(ChoiceError, match="not one we offer"):
        parse_choice({"scope": ["ALL"]}, token)
    with pytest.raises(ChoiceError, match="postal address"):
        parse_choice({"scope": ["POSTAL_MARKETING"]}, token)
    with pytest.raises(ChoiceError, match="check the postal address"):
        parse_choice({"scope": ["POSTAL_MARKETING"], "addr_line1": ["1 Main St"]}, token)
    typed = {
        "scope": ["POSTAL_MARKETING"],
        "addr_name": ["Jane Doe"],
        "addr_line1": ["1 Main St"],
        "addr_city": ["Springfield"],
        "addr_postal_code": ["12345"],
        "addr_country": ["us"],
    }
    choice = parse_choice(typed, token)
    assert choice.scopes == (Scope.POSTAL_MARKETING,)
    assert choice.postal_address is not None and choice.postal_address["country"] == "US"
    # A token that carries the address needs nothing typed.
    assert parse_choice({"scope": ["POSTAL_MARKETING"]}, verified(postal_address=ADDRESS)).postal_address


def test_gpc_fields():
    keys = ring()
    token = verify(keys, mint(keys, claims(purpose=Purpose.GPC, email=None)), NOW, Purpose.GPC)
    fields = gpc_fields(token, NOW)
    assert fields["scopes"] == ["THIRD_PARTY_SHARING"]
    assert fields["source"] == "GPC_SIGNAL"
    assert fields["event_id"] == gpc_event_id("cust-42")
    assert "email" not in fields


@pytest.mark.parametrize(
    ("body", "ctype", "expected"),
    [
        (b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded", True),
        (b"List-Unsubscribe=One-Click", "", True),
        (
            b"List-Unsubscribe=One-Click&List-Unsubscribe=One-Click",
            "application/x-www-form-urlencoded",
            False,
        ),
        (b"List-Unsubscribe=Two-Click", "application/x-www-form-urlencoded", False),
        (b"", "application/x-www-form-urlencoded", False),
    ],
)
def test_one_click_body(body, ctype, expected):
    assert is_one_click(parse_form(body, ctype)) is expected


def test_one_click_body_as_multipart():
    body = b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--XyZ--\r\n'
    form = parse_form(body, "multipart/form-data; boundary=XyZ")
    assert is_one_click(form)


def test_unreadable_forms():
    with pytest.raises(FormError):
        parse_form(b"{}", "application/json")
    with pytest.raises(FormError):
        parse_form(b"\xff\xfe", "application/x-www-form-urlencoded")
    with pytest.raises(FormError):
        parse_form("&".join(f"f{i}=1" for i in range(100)).encode(), "application/x-www-form-urlencoded")


# --- links ------------------------------------------------------------------------


def test_mint_link_gives_the_rfc_8058_headers_and_refuses_unusable_links():
    cfg = Settings(web_public_url="https://example.org/")
    clock = ManualClock(NOW)
    link = mint_link(cfg, email="Jane@Example.com", clock=clock)
    assert link.url.startswith("https://example.org/u/dev.")
    assert link.headers() == {
        "List-Unsubscribe": f"<{link.url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert "jane" not in link.url.lower()
    token = verify(keyring_from_settings(cfg), link.token, NOW, Purpose.UNSUBSCRIBE)
    assert token.claims.expires_at == NOW + timedelta(days=cfg.web_token_ttl_days)
    with pytest.raises(PoisonMessage, match="missing_identifier_for_scope"):
        mint_link(cfg, customer_id="c-1", scopes=[Scope.EMAIL_MARKETING])
    with pytest.raises(PoisonMessage, match="missing_identifier_for_scope"):
        mint_link(cfg, email="a@example.com", scopes=[Scope.POSTAL_MARKETING])
    gpc = mint_gpc_token(cfg, "c-1", clock=clock)
    assert verify(keyring_from_settings(cfg), gpc, NOW, Purpose.GPC).claims.customer_id == "c-1"


# --- rate limiting -------------------------------------------------------------------


def test_token_bucket_per_client():
    clock = ManualClock(NOW)
    limiter = RateLimiter(2.0, 3, clock.monotonic)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # other clients unaffected
    clock.advance(timedelta(seconds=0.5))
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    clock.advance(timedelta(seconds=60))
    assert [limiter.acquire("a") for _ in range(4)].count(0.0) == 3  # refills only to burst


def test_rate_limiter_memory_is_bounded():
    clock = ManualClock(NOW)
    limiter = RateLimiter(1.0, 1, clock.monotonic, max_clients=100)
    for i in range(1000):
        limiter.acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


# --- pages ------------------------------------------------------------------------------


def test_csp_hash_matches_the_inline_stylesheet():
    digest = base64.b64encode(hashlib.sha256(pages.CSS.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in pages.CONTENT_SECURITY_POLICY
    html = pages.choose_page("a.abc", verified().claims)
    assert f"<style>{pages.CSS}</style>" in html
    assert "<script" not in html


def test_pages_mask_the_email_and_escape_what_people_typed():
    claims_ = verified().claims
    html = pages.choose_page(
        "a.abc",
        claims_,
        error="x",
        selected=[Scope.EMAIL_MARKETING],
        address={"addr_name": '"><script>alert(1)</script>'},
    )
    assert "jane.doe@example.com" not in html
    assert "j•••••e@e•••••e.com" in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert (
        'value="EMAIL_MARKETING" id="scope-email-marketing" '
        'aria-describedby="scope-email-marketing-hint" checked'
    ) in html
    assert 'role="alert"' in html
    # Every control has a label.
    for ident in re.findall(r'<input type="(?:checkbox|text)"[^>]* id="([^"]+)"', html):
        assert f'<label for="{ident}">' in html


def test_status_page_states():
    claims_ = verified().claims
    empty = pages.status_page("a.abc", claims_, [])
    assert 'data-state="not yet received"' in empty
    view = pages.RequestView("e1", "pending", ("EMAIL_MARKETING",), NOW, NOW + timedelta(days=2), None, 0, 1)
    done = pages.RequestView("e2", "confirmed", ("ALL",), NOW, NOW + timedelta(days=2), NOW, 2, 2)
    assert pages.overall_state([view, done]) == "pending"
    assert pages.overall_state([done]) == "confirmed"
    html = pages.status_page("a.abc", claims_, [done])
    assert 'id="overall" data-state="confirmed"' in html
    assert "Confirmed 4 March 2025." in html
