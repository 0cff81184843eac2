"""The web's rules for addresses, event ids, client addresses and GPC: pure logic, and the
ASGI app in process with a small fake publisher (no broker, no database)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from services.common.clock import ManualClock
from services.common.contract import Scope
from services.common.settings import Settings
from services.publisher.publish import Prepared, RequestPublisher
from services.web import pages
from services.web.app import create_app
from services.web.links import mint_gpc_token, mint_link
from services.web.requests import ChoiceError, gpc_fields, page_fields, parse_choice
from services.web.tokens import KeyRing, Purpose, gpc_event_id, make_claims, mint, verify

NOW = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
RING = KeyRing({"a": bytes(range(32))}, "a")
TYPED = {
    "scope": ["POSTAL_MARKETING"],
    "addr_name": ["Jane Doe"],
    "addr_line1": ["1 Main St"],
    "addr_city": ["Springfield"],
    "addr_postal_code": ["12345"],
    "addr_country": ["US"],
}


def token(purpose: Purpose = Purpose.UNSUBSCRIBE, **values: Any):
    scopes = values.pop("scopes", [Scope.EMAIL_MARKETING])
    return verify(RING, mint(RING, make_claims(purpose, scopes, **values)), NOW, purpose)


# --- 1. a typed postal address is bound to a customer id ------------------------------------


def test_a_typed_address_needs_a_customer_id_in_the_token():
    email_only = token(email="jane@example.com")
    with pytest.raises(ChoiceError, match="customer account"):
        parse_choice(TYPED, email_only)
    # With a customer id the typed address is accepted, and both go to the mail house.
    bound = token(email="jane@example.com", customer_id="c-9")
    choice = parse_choice(TYPED, bound)
    fields = page_fields(bound, choice, NOW)
    assert fields["customer_id"] == "c-9"
    assert fields["postal_address"]["lines"] == ["1 Main St"]


def test_an_address_in_the_token_wins_over_a_typed_one():
    carried = {"name": "Ada", "lines": ["12 Sq"], "city": "London", "postal_code": "SW1", "country": "GB"}
    tok = token(email="jane@example.com", postal_address=carried)
    choice = parse_choice(TYPED, tok)
    assert choice.postal_address is not None and choice.postal_address["city"] == "London"


def test_the_page_offers_address_fields_only_with_a_customer_id():
    email_only = pages.choose_page("a.b", token(email="jane@example.com").claims)
    assert 'name="addr_line1"' not in email_only
    assert 'value="POSTAL_MARKETING"' not in email_only
    assert "customer account" in email_only  # it says why
    bound = pages.choose_page("a.b", token(email="jane@example.com", customer_id="c-9").claims)
    assert 'name="addr_line1"' in bound and 'value="POSTAL_MARKETING"' in bound


# --- 2. different content gets a different event id -------------------------------------


def test_a_corrected_address_gets_a_new_event_id_and_the_same_one_the_same_id():
    tok = token(email="jane@example.com", customer_id="c-9")
    first = page_fields(tok, parse_choice(TYPED, tok), NOW)["event_id"]
    again = page_fields(tok, parse_choice(TYPED, tok), NOW)["event_id"]
    corrected = page_fields(tok, parse_choice({**TYPED, "addr_line1": ["2 Main St"]}, tok), NOW)["event_id"]
    assert first == again
    assert corrected != first


def test_gpc_tokens_with_other_jurisdictions_get_other_event_ids():
    ca = token(Purpose.GPC, customer_id="c-9", jurisdiction="US-CA")
    co = token(Purpose.GPC, customer_id="c-9", jurisdiction="US-CO")
    none = token(Purpose.GPC, customer_id="c-9")
    ids = {gpc_fields(t, NOW)["event_id"] for t in (ca, co, none)}
    assert len(ids) == 3
    assert gpc_fields(none, NOW)["event_id"] == gpc_event_id("c-9")  # unchanged without one


# --- the app in process, with a fake publisher ------------------------------------------------


class FakePublisher:
    """Validates like the real one (intake's rules), remembers instead of producing."""

    def __init__(self, settings: Settings) -> None:
        self.inner = RequestPublisher(settings, producer=object())  # never produces
        self.published: list[dict[str, Any]] = []

    def start(self) -> None:
        pass

    def prepare(self, fields: Mapping[str, Any]) -> Prepared:
        return self.inner.prepare(fields)

    async def publish(self, prepared: Prepared) -> None:
        self.published.append(prepared.record)

    def close(self, timeout: float = 10.0) -> None:
        pass


class NoStatuses:
    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def requests(self, event_ids, refs=(), customer_id=None):
        return []


def _app(cfg: Settings, clock: ManualClock | None = None):
    publisher = FakePublisher(cfg)
    app = create_app(cfg, publisher=publisher, statuses=NoStatuses(), clock=clock or ManualClock(NOW))
    return app, publisher


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


ONE_CLICK = {
    "content": b"List-Unsubscribe=One-Click",
    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
}


def test_behind_a_trusted_proxy_each_client_has_its_own_bucket():
    cfg = Settings(
        web_rate_limit_per_second=0.001, web_rate_limit_burst=2, web_trusted_proxies=["10.0.0.0/8"]
    )
    app, _ = _app(cfg)
    proxy = TestClient(app, client=("10.0.0.2", 4000))
    path = _path(mint_link(cfg, email="a@example.com", ring=None).url)

    def get(forwarded: str) -> int:
        return proxy.get(path, headers={"X-Forwarded-For": forwarded}).status_code

    assert [get("203.0.113.9") for _ in range(3)] == [200, 200, 429]
    assert get("203.0.113.10") == 200  # another client behind the same proxy
    # A client that forges the header is still itself (the proxy appends the real address).
    assert get("198.51.100.1, 203.0.113.9") == 429
    # IPv6 clients share one bucket per /64.
    assert [get("2001:db8:1:2::1"), get("2001:db8:1:2::2"), get("2001:db8:1:2::3")] == [200, 200, 429]
    assert get("2001:db8:1:3::1") == 200
    # An untrusted peer's header is ignored: its own address is the bucket.
    direct = TestClient(app, client=("198.51.100.7", 4000))
    codes = [
        direct.get(path, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(50, 53)
    ]
    assert codes == [200, 200, 429]


def test_one_click_posts_are_limited_per_token_not_per_address():
    cfg = Settings(web_rate_limit_per_second=0.001, web_rate_limit_burst=2)
    app, publisher = _app(cfg)
    mailbox_provider = TestClient(app, client=("192.0.2.25", 4000))
    links = [_path(mint_link(cfg, email=f"r{i}@example.com").url) for i in range(5)]
    # One provider address posts for many recipients: none of them is limited.
    assert [mailbox_provider.post(p, **ONE_CLICK).status_code for p in links] == [200] * 5
    # One token hammered is limited, from whichever address.
    again = [mailbox_provider.post(links[0], **ONE_CLICK).status_code for _ in range(2)]
    assert again == [200, 429]
    elsewhere = TestClient(app, client=("198.51.100.3", 4000))
    assert elsewhere.post(links[0], **ONE_CLICK).status_code == 429
    assert len(publisher.published) == 6
    # Garbage tokens do not get a fresh bucket each: they count against the address.
    spray = [mailbox_provider.post(f"/u/a.{'A' * (40 + i)}", **ONE_CLICK).status_code for i in range(3)]
    assert spray == [400, 400, 429]


# --- 4. GPC: state changes on POST (or a script's request), never on a navigation ----------


def test_gpc_get_with_the_token_in_the_url_changes_nothing():
    cfg = Settings(web_rate_limit_per_second=1000.0, web_rate_limit_burst=1000)
    app, publisher = _app(cfg)
    client = TestClient(app)
    gpc = mint_gpc_token(cfg, "c-gpc", clock=ManualClock(NOW))
    navigation = {"Sec-GPC": "1", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    in_url = client.get(f"{cfg.web_gpc_path}?t={gpc}", headers={"Sec-GPC": "1"})
    navigated = client.get(cfg.web_gpc_path, headers={**navigation, "Authorization": f"Bearer {gpc}"})
    assert in_url.status_code == 400 and "URL" in in_url.json()["error"]
    assert navigated.status_code == 200 and navigated.json()["recorded"] is False
    assert publisher.published == []
    # A POST with the token in its body records it; so does a script's fetch with Bearer.
    posted = client.post(cfg.web_gpc_path, data={"t": gpc}, headers={"Sec-GPC": "1"})
    assert posted.status_code == 200 and posted.json()["event_id"] == gpc_event_id("c-gpc")
    other = mint_gpc_token(cfg, "c-gpc-2", clock=ManualClock(NOW))
    fetched = client.get(
        cfg.web_gpc_path,
        headers={"Sec-GPC": "1", "Sec-Fetch-Mode": "cors", "Authorization": f"Bearer {other}"},
    )
    assert fetched.status_code == 200 and fetched.json()["recorded"] is True
    assert [r["customer_id"] for r in publisher.published] == ["c-gpc", "c-gpc-2"]


def test_the_page_keeps_the_token_out_of_the_urls_it_posts_to():
    cfg = Settings(web_rate_limit_per_second=1000.0, web_rate_limit_burst=1000)
    app, publisher = _app(cfg)
    client = TestClient(app)
    link = mint_link(cfg, email="jane@example.com", customer_id="c-1", clock=ManualClock(NOW))
    page = client.get(_path(link.url)).text
    actions = set(re.findall(r'action="([^"]+)"', page))
    assert actions and all(link.token not in a for a in actions), actions
    assert f'name="t" value="{link.token}"' in page
    done = client.post("/u/choose", data={"t": link.token, "choice": "all"})
    assert done.status_code == 200 and "Request received" in done.text
    assert all(link.token not in a for a in re.findall(r'action="([^"]+)"', done.text))
    status = client.post("/u/status", data={"t": link.token})
    assert status.status_code == 200 and 'data-state="not yet received"' in status.text
    assert len(publisher.published) == 1
    assert client.post("/u/choose", data={"t": "garbage", "choice": "all"}).status_code == 400
