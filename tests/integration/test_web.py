"""The web service over HTTP against the real broker and database (issue: one-click links)."""

from __future__ import annotations

import re
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from starlette.testclient import TestClient

from services.common.clock import ManualClock
from services.common.contract import Scope
from services.intake.service import run as run_intake
from services.web.app import create_app
from services.web.links import mint_gpc_token, mint_link
from services.web.service import run as run_web
from services.web.tokens import (
    KeyRing,
    Purpose,
    b64decode,
    b64encode,
    generate_key,
    gpc_event_id,
    keyring_from_settings,
    make_claims,
    mint,
    request_event_id,
    verify,
)
from tests.support.pipeline import (
    isolated_settings,
    messages_on,
    read_topic,
    running,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.integration

ONE_CLICK = {
    "content": b"List-Unsubscribe=One-Click",
    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
}
GENEROUS = {"web_rate_limit_per_second": 1000.0, "web_rate_limit_burst": 1000}


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def _requests(cfg, expect: int):
    """The ``expect`` messages on the requests topic, after checking that exactly that many
    are there (every 200 was acked before it was answered, so the count is already final)."""
    assert messages_on(cfg, cfg.requests_topic) == expect
    return [r.decoded() for r in read_topic(cfg, cfg.requests_topic, expect=expect, timeout=30, settle=0)]


def _rows(cfg, event_id: str) -> int:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM requests WHERE event_id = %s", (event_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_one_click_publishes_once_acked_and_twice_is_recorded_once(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    link = mint_link(
        cfg,
        email="Jane.Doe@Example.com",
        customer_id="c-1",
        scopes=[Scope.EMAIL_MARKETING, Scope.THIRD_PARTY_SHARING],
    )
    token = verify(keyring_from_settings(cfg), link.token, datetime.now(UTC), Purpose.UNSUBSCRIBE)
    expected_id = request_event_id(token, [Scope.EMAIL_MARKETING, Scope.THIRD_PARTY_SHARING])
    with TestClient(create_app(cfg)) as client:
        first = client.post(_path(link.url), **ONE_CLICK)
        # Acked means on the topic already: read it back before posting again.
        after_first = _requests(cfg, expect=1)
        second = client.post(_path(link.url), **ONE_CLICK)
    assert first.status_code == 200 and second.status_code == 200
    assert "set-cookie" not in first.headers and "location" not in first.headers
    assert len(after_first) == 1
    records = _requests(cfg, expect=2)
    assert len(records) == 2
    assert {r["event_id"] for r in records} == {expected_id}
    record = records[0]
    assert record["source"] == "ONE_CLICK"
    assert sorted(record["scopes"]) == ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"]
    assert record["email"] == "jane.doe@example.com" and record["customer_id"] == "c-1"

    with running(run_intake, cfg, "intake"):
        wait_committed(cfg, {cfg.group("intake"): (cfg.requests_topic,)})  # both messages
    assert _rows(cfg, expected_id) == 1
    assert _requests_dlq(cfg) == 0


def _requests_dlq(cfg) -> int:
    return messages_on(cfg, cfg.requests_dlq_topic)


def _reference(html: str) -> str:
    match = re.search(r"Your reference: <code>([^<]+)</code>", html)
    assert match is not None, html
    return match.group(1)


def test_a_corrected_resubmission_is_recorded_and_nothing_is_dead_lettered(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    link = mint_link(cfg, email="jane.doe@example.com", customer_id="c-fix")
    typed = {
        "scope": ["POSTAL_MARKETING"],
        "addr_name": "Jane Doe",
        "addr_line1": "1 Mian St",
        "addr_city": "Springfield",
        "addr_postal_code": "12345",
        "addr_country": "US",
    }
    corrected = {**typed, "addr_line1": "1 Main St"}
    gpc_ca = mint_gpc_token(cfg, "c-fix", jurisdiction="US-CA")
    gpc_co = mint_gpc_token(cfg, "c-fix", jurisdiction="US-CO")
    with TestClient(create_app(cfg)) as client:
        first = client.post(_path(link.url) + "/choose", data=typed)
        second = client.post(_path(link.url) + "/choose", data=corrected)
        repeated = client.post(_path(link.url) + "/choose", data=corrected)
        signals = [
            client.post(cfg.web_gpc_path, headers={"Sec-GPC": "1", "Authorization": f"Bearer {t}"})
            for t in (gpc_ca, gpc_co)
        ]
    assert [r.status_code for r in (first, second, repeated)] == [200, 200, 200]
    assert [s.status_code for s in signals] == [200, 200]
    page_ids = [_reference(r.text) for r in (first, second, repeated)]
    assert page_ids[0] != page_ids[1] == page_ids[2]
    gpc_ids = [s.json()["event_id"] for s in signals]
    with running(run_intake, cfg, "intake"):
        wait_committed(cfg, {cfg.group("intake"): (cfg.requests_topic,)})
    with psycopg.connect(cfg.dsn()) as conn:
        rows = conn.execute(
            "SELECT event_id, postal_address->'lines'->>0, jurisdiction FROM requests"
            " WHERE customer_id = 'c-fix' ORDER BY requested_at"
        ).fetchall()
    recorded = {row[0]: row for row in rows}
    assert set(recorded) == {page_ids[0], page_ids[1], *gpc_ids}
    assert recorded[page_ids[1]][1] == "1 Main St"
    assert {recorded[i][2] for i in gpc_ids} == {"US-CA", "US-CO"}
    assert _requests_dlq(cfg) == 0


def test_get_shows_the_page_and_publishes_nothing(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    link = mint_link(cfg, email="jane.doe@example.com")
    with TestClient(create_app(cfg)) as client:
        page = client.get(_path(link.url))
        head = client.head(_path(link.url))
    assert page.status_code == 200
    assert head.status_code in (200, 405)
    html = page.text
    assert "j•••••e@e•••••e.com" in html and "jane.doe@example.com" not in html
    assert "Unsubscribe from all marketing" in html
    for name in ("EMAIL_MARKETING", "THIRD_PARTY_SHARING"):
        assert f'value="{name}"' in html
    # No customer id in the link: no postal address can be typed, and the page says why.
    assert 'value="POSTAL_MARKETING"' not in html and 'name="addr_line1"' not in html
    assert "customer account" in html
    assert "<script" not in html
    headers = page.headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    assert "set-cookie" not in headers
    assert messages_on(cfg, cfg.requests_topic) == 0


def test_the_page_form_publishes_the_chosen_scopes(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    link = mint_link(cfg, email="jane.doe@example.com", customer_id="c-7")
    token = verify(keyring_from_settings(cfg), link.token, datetime.now(UTC), Purpose.UNSUBSCRIBE)
    form = {
        "scope": ["EMAIL_MARKETING", "POSTAL_MARKETING"],
        "addr_name": "Jane Doe",
        "addr_line1": "1 Main St",
        "addr_city": "Springfield",
        "addr_postal_code": "12345",
        "addr_country": "US",
    }
    with TestClient(create_app(cfg)) as client:
        missing = client.post(_path(link.url) + "/choose", data={"scope": ["POSTAL_MARKETING"]})
        nothing = client.post(_path(link.url) + "/choose", data={})
        done = client.post(_path(link.url) + "/choose", data=form)
        everything = client.post(_path(link.url) + "/choose", data={"choice": "all"})
    assert missing.status_code == 400 and "postal address" in missing.text
    assert 'role="alert"' in missing.text
    assert nothing.status_code == 400
    assert done.status_code == 200 and "Request received" in done.text
    assert "What happens next" in done.text
    assert everything.status_code == 200
    records = {r["event_id"]: r for r in _requests(cfg, expect=2)}
    # The typed address is part of the request's content, so part of its event id.
    chosen = _reference(done.text)
    assert chosen != request_event_id(token, [Scope.EMAIL_MARKETING, Scope.POSTAL_MARKETING])
    assert set(records) == {chosen, request_event_id(token, [Scope.ALL])}
    assert records[chosen]["source"] == "EMAIL_LINK"
    assert records[chosen]["customer_id"] == "c-7"  # the mail house matches the address to it
    assert sorted(records[chosen]["scopes"]) == ["EMAIL_MARKETING", "POSTAL_MARKETING"]
    assert records[chosen]["postal_address"]["city"] == "Springfield"
    assert chosen in done.text


def test_status_follows_the_pipeline(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    link = mint_link(cfg, email="status@example.com")
    path = _path(link.url)
    with TestClient(create_app(cfg)) as client:
        before = client.get(path + "/status", headers={"Accept": "application/json"})
        assert before.json() == {"state": "not yet received", "requests": []}
        assert 'data-state="not yet received"' in client.get(path + "/status").text
        assert client.post(path, **ONE_CLICK).status_code == 200
        with running(run_intake, cfg, "intake"):
            wait_until(
                lambda: client.get(path + "/status?format=json").json()["requests"] != [],
                timeout=60,
                message="status shows the request",
            )
        after = client.get(path + "/status?format=json").json()
        page = client.get(path + "/status").text
    assert after["state"] == "pending"
    assert after["requests"][0]["scopes"] == ["EMAIL_MARKETING"]
    assert after["requests"][0]["destinations_total"] == 1
    assert 'id="overall" data-state="pending"' in page


def test_status_finds_a_typed_address_request_by_its_reference_for_its_customer_only(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    link = mint_link(cfg, email="ref@example.com", customer_id="c-ref")
    stranger = mint_link(cfg, email="other@example.com", customer_id="c-other")
    typed = {
        "t": link.token,
        "scope": ["POSTAL_MARKETING"],
        "addr_name": "Ref Person",
        "addr_line1": "3 High St",
        "addr_city": "Leeds",
        "addr_postal_code": "LS1 1AA",
        "addr_country": "GB",
    }
    with TestClient(create_app(cfg)) as client:
        done = client.post("/u/choose", data=typed)
        reference = _reference(done.text)
        # The received page's status button carries the reference, in the form body.
        assert f'name="ref" value="{reference}"' in done.text
        with running(run_intake, cfg, "intake"):
            wait_until(lambda: _rows(cfg, reference) == 1, timeout=60, message="intake recorded it")

        def status(token: str, refs: list[str]) -> list[str]:
            answer = client.post("/u/status", data={"t": token, "ref": refs, "format": "json"})
            assert answer.status_code == 200
            return [r["event_id"] for r in answer.json()["requests"]]

        assert status(link.token, [reference]) == [reference]
        assert status(link.token, []) == []  # not derivable from the token alone
        assert status(stranger.token, [reference]) == []  # another customer's link
        page = client.post("/u/status", data={"t": link.token, "ref": [reference]}).text
    assert reference in page and f'name="ref" value="{reference}"' in page  # "Check again" keeps it


def test_hostile_tokens_get_400_and_publish_nothing(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    ring = keyring_from_settings(cfg)
    now = datetime.now(UTC)
    good = mint_link(cfg, email="victim@example.com").token
    kid, body = good.split(".")
    raw = bytearray(b64decode(body))
    raw[-1] ^= 0x01
    altered = f"{kid}.{b64encode(bytes(raw))}"
    other_ring = KeyRing({"dev": b64decode(generate_key())}, "dev")
    forged = mint(other_ring, make_claims(Purpose.UNSUBSCRIBE, [Scope.ALL], email="victim@example.com"))
    unknown = mint(
        KeyRing({"k9": b64decode(generate_key())}, "k9"),
        make_claims(Purpose.UNSUBSCRIBE, [Scope.ALL], email="victim@example.com"),
    )
    expired = mint(
        ring,
        make_claims(
            Purpose.UNSUBSCRIBE,
            [Scope.EMAIL_MARKETING],
            email="victim@example.com",
            expires_at=now - timedelta(seconds=1),
        ),
    )
    gpc_as_link = mint_gpc_token(cfg, "c-1")
    bad = [altered, forged, unknown, expired, gpc_as_link, "garbage", "dev.AAAA", "a" * 3000]
    with TestClient(create_app(cfg)) as client:
        for token in bad:
            for method, suffix, kwargs in (
                ("POST", "", ONE_CLICK),
                ("GET", "", {}),
                ("POST", "/choose", {"data": {"choice": "all"}}),
                ("GET", "/status", {}),
            ):
                response = client.request(method, f"/u/{token}{suffix}", **kwargs)
                assert response.status_code == 400, (token[:20], method, suffix)
                assert "This link does not work" in response.text
                assert "content-security-policy" in response.headers
        # The genuine token still works, and only its one request is published.
        assert client.post(f"/u/{good}", **ONE_CLICK).status_code == 200
    records = _requests(cfg, expect=1)
    assert len(records) == 1 and records[0]["email"] == "victim@example.com"


def test_not_one_click_bodies_and_oversized_bodies(base_settings):
    cfg = isolated_settings(base_settings, web_max_body_bytes=1024, **GENEROUS)
    path = _path(mint_link(cfg, email="a@example.com").url)
    with TestClient(create_app(cfg)) as client:
        empty = client.post(path)
        wrong = client.post(
            path,
            content=b"List-Unsubscribe=Yes",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        huge = client.post(
            path,
            content=b"List-Unsubscribe=One-Click&pad=" + b"x" * 5000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        def chunks():
            for _ in range(10):
                yield b"x" * 500

        streamed = client.post(
            path + "/choose", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        missing = client.get("/nowhere")
    assert empty.status_code == 400 and wrong.status_code == 400
    assert huge.status_code == 413 and streamed.status_code == 413
    assert missing.status_code == 404 and "content-security-policy" in missing.headers
    assert messages_on(cfg, cfg.requests_topic) == 0


def test_rate_limit_answers_429_per_client(base_settings):
    cfg = isolated_settings(base_settings, web_rate_limit_per_second=0.5, web_rate_limit_burst=3)
    path = _path(mint_link(cfg, email="a@example.com").url)
    clock = ManualClock(datetime.now(UTC))
    with TestClient(create_app(cfg, clock=clock)) as client:
        codes = [client.get(path).status_code for _ in range(5)]
        limited = client.get(path)
        health = client.get("/healthz")
        clock.advance(timedelta(seconds=2))
        after_wait = client.get(path)
    assert codes == [200, 200, 200, 429, 429]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "referrer-policy" in limited.headers
    assert health.status_code == 200
    assert after_wait.status_code == 200


def test_broker_unreachable_answers_503_with_retry_after(base_settings):
    good = isolated_settings(base_settings, **GENEROUS)
    # Same topics and database, but the producer points at a closed port.
    cfg = good.model_copy(update={"kafka_bootstrap": "127.0.0.1:1", "web_publish_timeout_seconds": 2.0})
    link = mint_link(cfg, email="a@example.com")
    gpc = mint_gpc_token(cfg, "c-503")
    with TestClient(create_app(cfg)) as client:
        started = time.monotonic()
        one_click = client.post(_path(link.url), **ONE_CLICK)
        elapsed = time.monotonic() - started
        form = client.post(_path(link.url) + "/choose", data={"choice": "all"})
        signal = client.post(cfg.web_gpc_path, data={"t": gpc}, headers={"Sec-GPC": "1"})
    assert one_click.status_code == 503 and int(one_click.headers["retry-after"]) > 0
    assert "Please try again" in one_click.text
    assert elapsed < 10
    assert form.status_code == 503 and "retry-after" in form.headers
    assert signal.status_code == 503
    assert messages_on(good, good.requests_topic) == 0


def test_gpc_signal_opts_out_of_sharing_once_per_customer(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    token = mint_gpc_token(cfg, "cust-gpc-1")
    link_token = mint_link(cfg, email="a@example.com", customer_id="cust-gpc-1").token
    path = cfg.web_gpc_path
    with TestClient(create_app(cfg)) as client:
        no_signal = client.post(path, data={"t": token})
        in_url = client.get(f"{path}?t={token}", headers={"Sec-GPC": "1"})
        first = client.post(path, data={"t": token}, headers={"Sec-GPC": "1"})
        again = client.post(path, headers={"Sec-GPC": "1", "Authorization": f"Bearer {token}"})
        wrong_kind = client.post(path, data={"t": link_token}, headers={"Sec-GPC": "1"})
        missing = client.post(path, headers={"Sec-GPC": "1"})
    assert no_signal.status_code == 200 and no_signal.json() == {"gpc": False, "recorded": False}
    assert in_url.status_code == 400
    assert first.status_code == 200 and first.json()["event_id"] == gpc_event_id("cust-gpc-1")
    assert again.status_code == 200 and again.json()["event_id"] == gpc_event_id("cust-gpc-1")
    assert wrong_kind.status_code == 400 and missing.status_code == 400
    records = _requests(cfg, expect=1)
    assert len(records) == 1
    assert records[0]["source"] == "GPC_SIGNAL"
    assert records[0]["scopes"] == ["THIRD_PARTY_SHARING"]
    assert records[0]["customer_id"] == "cust-gpc-1" and records[0]["email"] is None


@pytest.mark.parametrize("workers", [1, 2])
def test_service_serves_until_the_stop_event(base_settings, workers):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = isolated_settings(
        base_settings,
        web_port=port,
        web_workers=workers,
        web_public_url=f"http://127.0.0.1:{port}",
        **GENEROUS,
    )
    link = mint_link(cfg, email="svc@example.com")
    with running(run_web, cfg, "web"):

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, message="web to listen")
        answers = [httpx.post(link.url, timeout=10, **ONE_CLICK).status_code for _ in range(4)]
        server_header = httpx.get(link.url, timeout=5).headers.get("server")
    assert answers == [200] * 4
    assert server_header is None
    assert not up(), "still listening after stop"
    assert len(_requests(cfg, expect=4)) == 4
