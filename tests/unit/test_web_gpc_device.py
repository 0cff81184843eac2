"""GPC for browsers without a token (the device id cookie, the device-only opt-out, the
honoured/not-yet page, the signal log) and "resubscribe": pure logic, and the ASGI app in
process with fakes (no broker, no database)."""

from __future__ import annotations

import re
from datetime import timedelta
from http.cookies import SimpleCookie

import pytest
from starlette.testclient import TestClient

from services.common.clock import ManualClock
from services.common.contract import Action, Identifier, Scope
from services.common.records import SuppressionCommandRecord
from services.common.settings import Settings
from services.connectors.kit import Command
from services.connectors.third_party_sharing import partner_record
from services.connectors.webhook_partners import HashFormat, Partner, partner_opt_out
from services.domain.identity import sha256_hex
from services.domain.planning import applicable_destinations
from services.publisher.publish import RequestPublisher
from services.web import device, pages
from services.web.app import create_app
from services.web.gpclog import GpcSignal, SignalLogUnavailable
from services.web.links import mint_gpc_token, mint_link
from services.web.requests import (
    device_gpc_fields,
    latest_actions,
    parse_resubscribe,
    resubscribable,
    resubscribe_fields,
)
from services.web.status import StatusUnavailable
from services.web.tokens import (
    MAX_ROUNDS,
    Purpose,
    candidate_event_ids,
    gpc_event_id,
    keyring_from_settings,
    optin_event_id,
    request_event_id,
    token_event_ids,
    verify,
)
from tests.unit.test_web_rules import NOW, FakePublisher, token

DEVICE = "A" * 16 + "b-_9" * 4
FAST = {
    "web_rate_limit_per_second": 1000.0,
    "web_rate_limit_burst": 1000,
    "web_resubscribe_record_wait_seconds": 0,  # the fake database never records anything
}


# --- the device id and its cookie -------------------------------------------------------


def test_a_new_device_id_is_32_url_safe_random_characters():
    ids = {device.new_device_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", i) for i in ids)
    with pytest.raises(ValueError):
        device.new_device_id(lambda _n: "short")


def test_the_cookie_is_first_party_httponly_lax_long_lived_and_secure_with_the_host_prefix():
    header = device.set_cookie_header(DEVICE, secure=True, max_age_days=395)
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    morsel = jar["__Host-optout_device"]
    assert morsel.value == DEVICE
    assert morsel["httponly"] and morsel["secure"]
    assert morsel["samesite"] == "Lax" and morsel["path"] == "/"
    assert morsel["max-age"] == str(395 * 86400)
    assert "Domain" not in header  # __Host-: no Domain, so no subdomain shares it
    local = device.set_cookie_header(DEVICE, secure=False, max_age_days=1)
    assert local.startswith("optout_device=") and "Secure" not in local and "HttpOnly" in local
    with pytest.raises(ValueError):
        device.set_cookie_header("not;an id", secure=True, max_age_days=1)


@pytest.mark.parametrize(
    ("header", "secure", "expected"),
    [
        (f"__Host-optout_device={DEVICE}", True, DEVICE),
        (f"other=1; __Host-optout_device={DEVICE}; x=y", True, DEVICE),
        (f"optout_device={DEVICE}", False, DEVICE),
        (f"optout_device={DEVICE}", True, None),  # the insecure name does not count when secure
        ("__Host-optout_device=short", True, None),
        (f"__Host-optout_device={DEVICE}x", True, None),
        ('__Host-optout_device="<script>"', True, None),
        ("", True, None),
        ("garbage;;;===", True, None),
    ],
)
def test_the_device_id_is_read_back_only_when_it_is_one_of_ours(header, secure, expected):
    assert device.device_from_cookies(header, secure) == expected


def test_one_event_id_per_device_distinct_from_customer_ids():
    assert device.device_event_id(DEVICE) == device.device_event_id(DEVICE)
    assert device.device_event_id(DEVICE) != device.device_event_id(DEVICE[::-1])
    assert device.device_event_id(DEVICE) != gpc_event_id(DEVICE)


def test_the_log_keeps_a_hash_of_kind_and_id_and_a_coarse_browser_family():
    assert device.subject_sha256("device", DEVICE) == sha256_hex(f"device:{DEVICE}")
    assert device.subject_sha256("customer", "c-1") != device.subject_sha256("device", "c-1")
    chrome = (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
    )
    assert device.user_agent_family(chrome) == "Chrome"
    assert device.user_agent_family(chrome.replace("Chrome/131.0", "HeadlessChrome/131.0")) == "Chromium"
    assert device.user_agent_family("Mozilla/5.0 (X11; rv:133.0) Gecko/20100101 Firefox/133.0") == "Firefox"
    assert device.user_agent_family(chrome + " Edg/131.0") == "Edge"
    assert device.user_agent_family("") == "none" and device.user_agent_family("Lynx/2.9") == "other"


# --- the device-only request and its route -------------------------------------------------


def test_a_device_only_opt_out_is_valid_and_reaches_the_sharing_destination():
    cfg = Settings()
    prepared = RequestPublisher(cfg, producer=object()).prepare(device_gpc_fields(DEVICE, NOW))
    record = prepared.record
    assert record["device_id"] == DEVICE and record["action"] == Action.OPT_OUT.value
    assert record["customer_id"] is None and record["email"] is None
    assert record["scopes"] == [Scope.THIRD_PARTY_SHARING.value] and record["source"] == "GPC_SIGNAL"
    assert prepared.key == f"device_sha256:{sha256_hex(DEVICE)}"
    routed = applicable_destinations(prepared.request, cfg.destinations)
    assert [d.id for d in routed] == ["third_party_sharing"]
    assert Identifier.DEVICE_ID in routed[0].identifiers


def _command(device_id: str | None = DEVICE) -> Command:
    return Command.from_record(
        SuppressionCommandRecord(
            command_id="cmd-1",
            request_id="req-1",
            destination="third_party_sharing",
            customer_id=None,
            email=None,
            phone=None,
            postal_address=None,
            email_sha256=None,
            phone_sha256=None,
            scopes=["THIRD_PARTY_SHARING"],
            issued_at=NOW,
            deadline=NOW + timedelta(days=15),
            action="OPT_OUT",
            requested_at=NOW,
            device_id=device_id,
        )
    )


def test_partners_receive_only_the_sha256_of_a_device_id():
    record = partner_record(_command())
    assert record == {"reference": "cmd-1", "device_id_sha256": sha256_hex(DEVICE)}
    key = b"k" * 32
    hmac_partner = Partner("p", "https://p.example/hook", HashFormat.HMAC_SHA256, (), key)
    sent = partner_opt_out(record, hmac_partner)
    assert set(sent) == {"reference", "device_id_hmac_sha256"} and DEVICE not in str(sent)
    assert partner_record(_command(device_id=None)) is None


# --- resubscribe -----------------------------------------------------------------------------


def test_resubscribe_offers_what_the_link_stopped_and_has_its_own_event_ids():
    tok = token(email="jane@example.com", customer_id="c-9")
    assert resubscribable(tok.claims, ["EMAIL_MARKETING"]) == [Scope.EMAIL_MARKETING]
    # ALL: every choice the link reaches (postal only with the address in the token).
    assert resubscribable(tok.claims, ["ALL"]) == [Scope.EMAIL_MARKETING, Scope.THIRD_PARTY_SHARING]
    assert parse_resubscribe({"scope": ["email_marketing"]}, [Scope.EMAIL_MARKETING]) == (
        Scope.EMAIL_MARKETING,
    )
    with pytest.raises(ValueError, match="not one we offer"):
        parse_resubscribe({"scope": ["THIRD_PARTY_SHARING"]}, [Scope.EMAIL_MARKETING])
    with pytest.raises(ValueError, match="at least one"):
        parse_resubscribe({}, [Scope.EMAIL_MARKETING])
    fields = resubscribe_fields(tok, (Scope.EMAIL_MARKETING,), NOW)
    assert fields["action"] == "OPT_IN" and fields["event_id"] == optin_event_id(tok, [Scope.EMAIL_MARKETING])
    assert fields["event_id"] != request_event_id(tok, [Scope.EMAIL_MARKETING])
    ids = token_event_ids(tok)
    assert set(candidate_event_ids(tok)) <= {i for i, a in ids.items() if a == "OPT_OUT"}
    assert ids[fields["event_id"]] == "OPT_IN"
    assert ids[request_event_id(tok, [Scope.EMAIL_MARKETING], round_=MAX_ROUNDS)] == "OPT_OUT"
    assert len(ids) == 31 * (MAX_ROUNDS + 1) + 7 * MAX_ROUNDS  # every id is distinct
    prepared = RequestPublisher(Settings(), producer=object()).prepare(fields)
    assert prepared.record["action"] == "OPT_IN" and prepared.record["email"] == "jane@example.com"


# --- the app in process -----------------------------------------------------------------------


class Statuses:
    """Answers with the views it is given, for the event ids asked about."""

    def __init__(self) -> None:
        self.views: dict[str, pages.RequestView] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def requests(self, event_ids, refs=(), customer_id=None):
        return [self.views[e] for e in event_ids if e in self.views]

    def put(
        self,
        event_id: str,
        state: str,
        scopes: tuple[str, ...] = ("THIRD_PARTY_SHARING",),
        at: timedelta = timedelta(0),
    ) -> None:
        confirmed = NOW if state == "confirmed" else None
        self.views[event_id] = pages.RequestView(
            event_id, state, scopes, NOW + at, NOW + timedelta(days=15), confirmed, 1 if confirmed else 0, 1
        )


class Log:
    def __init__(self, fail: bool = False) -> None:
        self.rows: list[GpcSignal] = []
        self.fail = fail

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def record(self, signal: GpcSignal) -> None:
        if self.fail:
            raise SignalLogUnavailable("OperationalError")
        self.rows.append(signal)


def _app(cfg: Settings, log: Log | None = None):
    publisher, statuses, signal_log = FakePublisher(cfg), Statuses(), log or Log()
    app = create_app(
        cfg, publisher=publisher, statuses=statuses, clock=ManualClock(NOW), signal_log=signal_log
    )
    return TestClient(app, base_url="https://testserver"), publisher, statuses, signal_log


def _state(html: str) -> str:
    found = re.search(r'id="gpc-state" data-state="([a-z]+)"', html)
    assert found, html
    return found.group(1)


def test_a_browser_without_a_token_gets_a_cookie_and_one_sharing_opt_out():
    cfg = Settings(**FAST)
    client, publisher, statuses, log = _app(cfg)
    ua = {"User-Agent": "Mozilla/5.0 Firefox/133.0", "Sec-Fetch-Mode": "navigate"}
    first = client.get(cfg.web_gpc_path, headers={"Sec-GPC": "1", **ua})
    assert first.status_code == 200 and _state(first.text) == "recorded"
    assert "not yet honored" in first.text
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("__Host-optout_device=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    device_id = client.cookies.get("__Host-optout_device")
    assert device_id and device.is_device_id(device_id)
    [record] = publisher.published
    assert record["device_id"] == device_id and record["customer_id"] is None and record["email"] is None
    assert record["event_id"] == device.device_event_id(device_id)
    # The same browser again: the same request (not published twice), no new cookie.
    statuses.put(record["event_id"], "pending")
    again = client.get(cfg.web_gpc_path, headers={"Sec-GPC": "1", **ua})
    assert "set-cookie" not in again.headers and _state(again.text) == "pending"
    assert len(publisher.published) == 1
    statuses.put(record["event_id"], "confirmed")
    honored = client.get(cfg.web_gpc_path, headers={"Sec-GPC": "1", **ua})
    assert _state(honored.text) == "honored" and "Opt-Out Request Honored" in honored.text
    # Without the signal now, the earlier opt-out still shows; nothing new is logged.
    off = client.get(cfg.web_gpc_path)
    assert _state(off.text) == "honored" and "not sending the signal right now" in off.text
    # The log: one row per applied signal, hashed, no raw id, first one published.
    assert [r.published for r in log.rows] == [True, False, False]
    assert {r.subject_sha256 for r in log.rows} == {device.subject_sha256("device", device_id)}
    assert all(device_id not in repr(r) for r in log.rows)
    assert {r.user_agent_family for r in log.rows} == {"Firefox"}
    # No script anywhere, and the CSP allows none.
    assert "<script" not in honored.text and "script-src" not in honored.headers["content-security-policy"]


def test_no_signal_and_no_cookie_sets_nothing_and_records_nothing():
    cfg = Settings(**FAST)
    client, publisher, _, log = _app(cfg)
    page = client.get(cfg.web_gpc_path)
    assert page.status_code == 200 and _state(page.text) == "none"
    assert "set-cookie" not in page.headers and publisher.published == [] and log.rows == []
    as_json = client.get(cfg.web_gpc_path, headers={"Accept": "application/json", "Sec-GPC": "1"})
    assert as_json.json()["gpc"] is True and as_json.json()["state"] == "recorded"


def test_a_tampered_cookie_gets_a_new_id_and_local_http_uses_the_plain_name():
    cfg = Settings(**FAST, web_device_cookie_secure=False)
    client, publisher, _, _ = _app(cfg)
    client.cookies.set("optout_device", "../../etc/passwd")
    answer = client.get(cfg.web_gpc_path, headers={"Sec-GPC": "1"})
    assert answer.headers["set-cookie"].startswith("optout_device=")
    assert "Secure" not in answer.headers["set-cookie"]
    assert device.is_device_id(publisher.published[0]["device_id"])


def test_a_signal_the_log_cannot_record_is_still_honoured():
    cfg = Settings(**FAST)
    client, publisher, _, _ = _app(cfg, Log(fail=True))
    answer = client.get(cfg.web_gpc_path, headers={"Sec-GPC": "1"})
    assert answer.status_code == 200 and len(publisher.published) == 1


def test_a_customer_token_posted_from_a_page_without_script_gets_the_page():
    cfg = Settings(**FAST)
    client, publisher, statuses, log = _app(cfg)
    gpc = mint_gpc_token(cfg, "c-page", clock=ManualClock(NOW))
    statuses.put(gpc_event_id("c-page"), "confirmed")
    page = client.post(cfg.web_gpc_path, data={"t": gpc}, headers={"Sec-GPC": "1", "Accept": "text/html"})
    assert page.status_code == 200 and _state(page.text) == "honored" and "your account" in page.text
    assert f'value="{gpc}"' in page.text  # "Check again" posts the token, never a URL with it
    assert publisher.published[0]["customer_id"] == "c-page"
    assert log.rows[0].subject_kind == "customer" and log.rows[0].subject_sha256 == device.subject_sha256(
        "customer", "c-page"
    )
    assert "set-cookie" not in page.headers


def test_the_page_offers_resubscribe_for_what_was_stopped_and_publishes_an_opt_in():
    cfg = Settings(**FAST)
    client, publisher, statuses, _ = _app(cfg)
    link = mint_link(cfg, email="jane@example.com", customer_id="c-r", clock=ManualClock(NOW))
    tok = verify(keyring_from_settings(cfg), link.token, NOW, Purpose.UNSUBSCRIBE)
    path = "/u/" + link.token
    assert "Resubscribe" not in client.get(path).text  # nothing stopped yet
    statuses.put(
        request_event_id(tok, [Scope.EMAIL_MARKETING]),
        "confirmed",
        ("EMAIL_MARKETING",),
        at=-timedelta(hours=1),
    )
    page = client.get(path).text
    assert 'action="/u/resubscribe"' in page and 'id="resub-email-marketing"' in page
    assert 'id="resub-third-party-sharing"' not in page
    form = {"t": link.token, "scope": "EMAIL_MARKETING"}
    refused = client.post("/u/resubscribe", data=form, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and publisher.published == []
    wrong = client.post("/u/resubscribe", data={**form, "scope": "THIRD_PARTY_SHARING"})
    assert wrong.status_code == 400 and publisher.published == []
    done = client.post("/u/resubscribe", data=form, headers={"Sec-Fetch-Site": "same-origin"})
    assert done.status_code == 200 and "Resubscribed" in done.text
    [record] = publisher.published
    assert record["action"] == "OPT_IN" and record["event_id"] == optin_event_id(tok, [Scope.EMAIL_MARKETING])
    assert record["scopes"] == ["EMAIL_MARKETING"] and record["email"] == "jane@example.com"
    # The status page shows it as "receive again"; the page no longer offers it.
    statuses.put(record["event_id"], "pending", ("EMAIL_MARKETING",))
    status = client.post("/u/status", data={"t": link.token}).text
    assert "Receive again: marketing email" in status and "Stop: marketing email" in status
    assert 'id="resub-email-marketing"' not in client.get(path).text


def test_the_gpc_states_follow_the_database():
    confirmed = pages.RequestView("e", "confirmed", (), NOW, NOW, NOW, 1, 1)
    pending = pages.RequestView("e", "pending", (), NOW, NOW, None, 0, 1)
    attention = pages.RequestView("e", "needs attention", (), NOW, NOW, None, 0, 1)
    assert pages.gpc_state([confirmed], True) == "honored"
    assert pages.gpc_state([pending], True) == "pending"
    assert pages.gpc_state([attention], True) == "attention"
    assert pages.gpc_state([], True) == "recorded"
    assert pages.gpc_state([], False) == "none"
    assert pages.gpc_state([], True, status_known=False) == "unknown"


def test_the_newest_request_per_choice_decides_and_a_tie_is_an_opt_out():
    hour = timedelta(hours=1)
    history = [
        (NOW, "OPT_OUT", ("ALL",)),
        (NOW + hour, "OPT_IN", ("EMAIL_MARKETING",)),
        (NOW + hour, "OPT_OUT", ("THIRD_PARTY_SHARING",)),
        (NOW + hour, "OPT_IN", ("THIRD_PARTY_SHARING",)),
    ]
    assert latest_actions(history) == {
        Scope.EMAIL_MARKETING: "OPT_IN",
        Scope.POSTAL_MARKETING: "OPT_OUT",
        Scope.THIRD_PARTY_SHARING: "OPT_OUT",
    }


def test_an_opt_out_after_a_resubscribe_is_a_new_request_not_the_first_one_again():
    cfg = Settings(**FAST)
    client, publisher, statuses, _ = _app(cfg)
    link = mint_link(cfg, email="jane@example.com", customer_id="c-round", clock=ManualClock(NOW))
    tok = verify(keyring_from_settings(cfg), link.token, NOW, Purpose.UNSUBSCRIBE)
    email = [Scope.EMAIL_MARKETING]
    out0 = request_event_id(tok, email)
    statuses.put(out0, "confirmed", ("EMAIL_MARKETING",), at=-timedelta(hours=3))
    form = {"t": link.token, "scope": "EMAIL_MARKETING"}
    assert client.post("/u/resubscribe", data=form).status_code == 200
    in0 = publisher.published[-1]["event_id"]
    assert in0 == optin_event_id(tok, email, 0)
    statuses.put(in0, "confirmed", ("EMAIL_MARKETING",), at=-timedelta(hours=2))
    # Resubscribed: the page offers no resubscribe; stopping again is a new request (round 1).
    assert 'id="resub-email-marketing"' not in client.get("/u/" + link.token).text
    assert client.post("/u/choose", data=form).status_code == 200
    out1 = publisher.published[-1]["event_id"]
    assert out1 == request_event_id(tok, email, round_=1) and out1 != out0
    # The one-click of the email's header, too.
    one_click = client.post(
        "/u/" + link.token,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200 and publisher.published[-1]["event_id"] == out1
    statuses.put(out1, "confirmed", ("EMAIL_MARKETING",), at=-timedelta(hours=1))
    # Stopped again: resubscribe is offered again and is a new opt-in (round 1).
    assert 'id="resub-email-marketing"' in client.get("/u/" + link.token).text
    assert client.post("/u/resubscribe", data=form).status_code == 200
    assert publisher.published[-1]["event_id"] == optin_event_id(tok, email, 1) != in0
    status = client.post("/u/status", data={"t": link.token}).text
    assert status.count("Stop: marketing email") == 2 and status.count("Receive again: marketing email") == 1


class DownStatuses(Statuses):
    async def requests(self, event_ids, refs=(), customer_id=None):
        raise StatusUnavailable("OperationalError")


def test_without_the_database_one_click_and_the_page_still_work_in_round_0():
    cfg = Settings(**FAST)
    publisher = FakePublisher(cfg)
    app = create_app(
        cfg, publisher=publisher, statuses=DownStatuses(), clock=ManualClock(NOW), signal_log=Log()
    )
    client = TestClient(app)
    link = mint_link(cfg, email="jane@example.com", clock=ManualClock(NOW))
    tok = verify(keyring_from_settings(cfg), link.token, NOW, Purpose.UNSUBSCRIBE)
    page = client.get("/u/" + link.token)
    assert page.status_code == 200 and "Resubscribe" not in page.text
    one_click = client.post(
        "/u/" + link.token,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    assert publisher.published[-1]["event_id"] == request_event_id(tok, [Scope.EMAIL_MARKETING])
    refused = client.post("/u/resubscribe", data={"t": link.token, "scope": "EMAIL_MARKETING"})
    assert refused.status_code == 503 and len(publisher.published) == 1


# --- the GPC support resource (W3C GPC, "The GPC Support Resource") ---------------------


def test_the_gpc_support_resource_says_the_signal_is_honoured_with_its_last_update():
    plain = Settings(**FAST)
    client = _app(plain)[0]
    answer = client.get("/.well-known/gpc.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"gpc": True}
    dated = Settings(**FAST, web_gpc_last_update="2026-11-30")
    assert _app(dated)[0].get("/.well-known/gpc.json").json() == {
        "gpc": True,
        "lastUpdate": "2026-11-30",
    }
    assert Settings(**FAST, web_gpc_last_update="").web_gpc_last_update is None
    with pytest.raises(ValueError):
        Settings(**FAST, web_gpc_last_update="30/11/2026")
