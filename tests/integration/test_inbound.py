"""``optout run inbound`` over HTTP against the real broker and database (issue #12).

Recorded payloads of each provider (tests/data/inbound, built from the providers' docs),
signed by tests/support/inbound_signers.py with test keys: each opt-out event becomes
exactly one OptOutRequested on the requests topic, a re-delivery carries the same event
id, and a forged, stale or replayed delivery gets 401 and publishes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from services.common.settings import Settings
from services.inbound import replay as replay_module
from services.inbound.base import inbound_event_id
from services.inbound.replay import ReplayStore
from services.inbound.service import run as run_inbound
from services.intake.service import run as run_intake
from tests.support.inbound_signers import SendGridSigner, SnsSigner, mailgun_sign, recorded, twilio_request
from tests.support.pipeline import free_port, isolated_settings, messages_on, read_topic, running, wait_until

pytestmark = pytest.mark.integration

TOPIC = "arn:aws:sns:us-west-2:123456789012:ses-feedback"
MAILGUN_KEY = "test-mailgun-signing-key"
TWILIO_TOKEN = "test-twilio-auth-token"


@pytest.fixture(scope="module")
def sendgrid() -> SendGridSigner:
    return SendGridSigner.generate()


@pytest.fixture(scope="module")
def sns() -> SnsSigner:
    return SnsSigner.generate()


@pytest.fixture
def cfg(base_settings, sendgrid: SendGridSigner, sns: SnsSigner, tmp_path: Path) -> Settings:
    port = free_port()
    return isolated_settings(
        base_settings,
        inbound_port=port,
        inbound_public_url=f"http://127.0.0.1:{port}",
        inbound_sendgrid_public_key=sendgrid.public_key,
        inbound_mailgun_signing_key=MAILGUN_KEY,
        inbound_sns_certificate=sns.write_certificate(tmp_path),
        inbound_sns_topic_arns=[TOPIC],
        inbound_twilio_auth_token=TWILIO_TOKEN,
    )


@contextmanager
def inbound(cfg: Settings) -> Iterator[httpx.Client]:
    with running(run_inbound, cfg, "inbound"), httpx.Client(base_url=cfg.inbound_public_url) as client:

        def up() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30, message="the inbound service to listen")
        yield client


def _requests(cfg: Settings, expect: int) -> list[dict[str, Any]]:
    assert messages_on(cfg, cfg.requests_topic) == expect
    return [r.decoded() for r in read_topic(cfg, cfg.requests_topic, expect=expect, timeout=30, settle=0)]


def _sendgrid_post(
    client: httpx.Client, signer: SendGridSigner, at: datetime | None = None
) -> httpx.Response:
    body = json.dumps(recorded("sendgrid_events.json")["body"]).encode()
    return client.post("/sendgrid/events", content=body, headers=signer.headers(body, at))


def _mailgun_body(name: str, key: str = MAILGUN_KEY, at: datetime | None = None) -> bytes:
    return mailgun_sign(recorded(name)["body"], key, at)


def _sns_post(
    client: httpx.Client, signer: SnsSigner, name: str, at: datetime | None = None
) -> httpx.Response:
    data = recorded(name)
    return client.post("/ses/sns", content=json.dumps(signer.sign(data["body"], at)), headers=data["headers"])


def _sms_post(
    client: httpx.Client, cfg: Settings, text: str, sid: str, token: str = TWILIO_TOKEN
) -> httpx.Response:
    params = {**recorded("twilio_sms_stop.json")["params"], "Body": text, "MessageSid": sid, "SmsSid": sid}
    body, headers = twilio_request(token, cfg.inbound_public_url + "/twilio/sms", params)
    return client.post("/twilio/sms", content=body, headers=headers)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_email_provider_payloads_each_become_one_request_and_redeliveries_the_same(cfg, sendgrid, sns):
    pending_before = _metric("optout_inbound_sns_subscriptions_total", outcome="pending")
    with inbound(cfg) as client:
        assert _sendgrid_post(client, sendgrid).status_code == 200
        assert _sendgrid_post(client, sendgrid).status_code == 200  # SendGrid retries the batch
        unsubscribed = _mailgun_body("mailgun_unsubscribed.json")
        assert client.post("/mailgun/events", content=unsubscribed).status_code == 200
        # Mailgun re-delivers the same event with a fresh token and signature: same request.
        assert (
            client.post("/mailgun/events", content=_mailgun_body("mailgun_unsubscribed.json")).status_code
            == 200
        )
        # The very same signed body again is a replay (its token was used): refused.
        assert client.post("/mailgun/events", content=unsubscribed).status_code == 401
        assert (
            client.post("/mailgun/events", content=_mailgun_body("mailgun_complained.json")).status_code
            == 200
        )
        complaint = _sns_post(client, sns, "ses_complaint.json")
        assert complaint.status_code == 200
        assert _sns_post(client, sns, "ses_complaint.json").status_code == 200  # SNS retry
        assert _sns_post(client, sns, "ses_subscription.json").status_code == 200
        assert _sns_post(client, sns, "sns_subscription_confirmation.json").status_code == 200
    assert _metric("optout_inbound_sns_subscriptions_total", outcome="pending") == pending_before + 1

    records = _requests(cfg, expect=3 * 2 + 2 + 1 + 2 + 1)
    ids = {
        "sendgrid": {
            inbound_event_id("sendgrid", e)
            for e in ("zmzJhfJgAfUSOW80yEbPyw==", "ahSCB7xYcXFb-hEaawsPRw==", "37nvH5QBz858KGVYCM4uOA==")
        },
        "mailgun": {
            inbound_event_id("mailgun", e) for e in ("Ase7i2zsRYeDXztHGENqRA", "ncV2XwymRUKbPek_MIM-Gw")
        },
        "ses": {
            inbound_event_id("ses", e)
            for e in ("22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324", "5f7e1d2c-8a4b-4c7e-9d1a-3b2c4d5e6f70")
        },
    }
    assert {r["event_id"] for r in records} == set().union(*ids.values())
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_id.setdefault(record["event_id"], []).append(record)
    assert sorted(len(v) for v in by_id.values()) == [1, 1, 2, 2, 2, 2, 2]  # re-deliveries: same id
    emails = {r["email"] for r in records}
    assert emails == {
        "example@test.com",
        "other@test.com",
        "third@test.com",
        "alice@example.com",
        "bob@example.com",
        "richard@example.com",
        "recipient@example.com",
    }
    assert all(r["source"] == "PROVIDER_WEBHOOK" and r["scopes"] == ["EMAIL_MARKETING"] for r in records)
    assert all(r["action"] == "OPT_OUT" for r in records)

    # Intake records each request once (the re-deliveries are the same request).
    with running(run_intake, cfg, "intake"):
        wait_until(lambda: _rows(cfg) == 7, timeout=60, message="intake to record the 7 requests")
    assert messages_on(cfg, cfg.requests_dlq_topic) == 0


def _rows(cfg: Settings) -> int:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM requests WHERE source = 'PROVIDER_WEBHOOK'").fetchone()
    assert row is not None
    return int(row[0])


def test_sms_stop_and_start_publish_with_twiml_replies(cfg):
    with inbound(cfg) as client:
        stop = _sms_post(client, cfg, "  Stop! ", "SM00000000000000000000000000000001")
        again = _sms_post(client, cfg, "  Stop! ", "SM00000000000000000000000000000001")  # replayed
        start = _sms_post(client, cfg, "start", "SM00000000000000000000000000000002")
        chat = _sms_post(client, cfg, "Is the shop open today?", "SM00000000000000000000000000000003")
    assert stop.status_code == again.status_code == start.status_code == chat.status_code == 200
    assert stop.headers["content-type"].startswith("application/xml")
    assert f"<Message>{cfg.inbound_sms_stop_reply}</Message>" in stop.text
    assert f"<Message>{cfg.inbound_sms_start_reply}</Message>" in start.text
    assert chat.text.endswith("<Response></Response>")
    records = _requests(cfg, expect=3)
    stop_id = inbound_event_id("twilio", "SM00000000000000000000000000000001")
    start_id = inbound_event_id("twilio", "SM00000000000000000000000000000002")
    assert sorted(r["event_id"] for r in records) == sorted([stop_id, stop_id, start_id])
    actions = {r["event_id"]: r["action"] for r in records}
    assert actions == {stop_id: "OPT_OUT", start_id: "OPT_IN"}
    for record in records:
        assert record["phone"] == "+12125551234" and record["scopes"] == ["SMS_MARKETING"]
        assert record["source"] == "SMS_REPLY" and record["jurisdiction"] == "US"


def test_forged_stale_or_unsigned_webhooks_get_401_and_publish_nothing(cfg, sendgrid, sns):
    old = datetime.now(UTC) - timedelta(seconds=cfg.inbound_max_age_seconds + 60)
    before = _metric("optout_inbound_webhooks_total", provider="sendgrid", outcome="bad_signature")
    with inbound(cfg) as client:
        refused = [
            _sendgrid_post(client, SendGridSigner.generate()),  # another key
            _sendgrid_post(client, sendgrid, old),
            client.post("/sendgrid/events", content=b"[]"),
            client.post("/mailgun/events", content=_mailgun_body("mailgun_unsubscribed.json", key="wrong")),
            client.post("/mailgun/events", content=_mailgun_body("mailgun_complained.json", at=old)),
            _sns_post(client, SnsSigner.generate(), "ses_complaint.json"),
            _sns_post(client, sns, "ses_complaint.json", datetime.now(UTC) - timedelta(hours=2)),
            _sms_post(client, cfg, "STOP", "SM00000000000000000000000000000009", token="wrong"),
        ]
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert messages_on(cfg, cfg.requests_topic) == 0
    assert (
        _metric("optout_inbound_webhooks_total", provider="sendgrid", outcome="bad_signature") == before + 2
    )


def test_replay_memory_is_shared_by_instances_and_forgets_expired_tokens(base_settings):
    dsn = Settings(**base_settings).dsn()

    async def scenario() -> None:
        one, two = ReplayStore(dsn), ReplayStore(dsn)
        await one.open()
        await two.open()
        try:
            now = datetime.now(UTC)
            assert not await two.seen("mailgun", "token-a")
            await one.remember("mailgun", "token-a", now + timedelta(minutes=10))
            assert await two.seen("mailgun", "token-a")  # another instance sees it
            assert not await two.seen("sendgrid", "token-a")  # per provider
            await one.remember("mailgun", "token-old", now - timedelta(seconds=1))
            assert not await two.seen("mailgun", "token-old")  # expired: stale anyway
            replay_module.CLEANUP_EVERY_SECONDS = 0.0
            await two.remember("mailgun", "token-b", now + timedelta(minutes=10))
        finally:
            replay_module.CLEANUP_EVERY_SECONDS = 60.0
            await one.close()
            await two.close()

    asyncio.run(scenario())
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT token_sha256 FROM inbound_replay_tokens ORDER BY 1").fetchall()
    assert len(rows) == 2  # token-a and token-b; the expired one was deleted
    assert all(len(r[0]) == 64 for r in rows)  # only hashes are stored
