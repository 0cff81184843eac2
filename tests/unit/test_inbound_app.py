"""The inbound app's HTTP behaviour with fakes: 503 + Retry-After when the broker (or the
replay memory) does not answer, nothing answered 200 before the ack, invalid events
skipped, SNS subscriptions confirmed when the settings say so."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from services.common.clock import ManualClock
from services.common.settings import Settings
from services.inbound.app import create_app
from services.inbound.replay import ReplayUnavailable
from services.publisher.publish import Prepared, RequestPublisher
from services.web.publishing import PublishUnavailable
from tests.support.fake_kafka import FakeBroker, FakeProducer
from tests.support.inbound_signers import SnsSigner, mailgun_sign, recorded

NOW = datetime.now(UTC)
KEY = "unit-mailgun-key"
TOPIC = "arn:aws:sns:us-west-2:123456789012:ses-feedback"


class FakePublisher:
    def __init__(self, settings: Settings, fail: bool = False) -> None:
        self.inner = RequestPublisher(settings, producer=FakeProducer(FakeBroker()))
        self.fail = fail
        self.published: list[Prepared] = []

    def start(self) -> None:
        pass

    def prepare(self, fields: Mapping[str, Any]) -> Prepared:
        return self.inner.prepare(fields)

    async def publish(self, prepared: Prepared) -> None:
        if self.fail:
            raise PublishUnavailable("no acknowledgement in time", retry_after=7)
        self.published.append(prepared)

    def close(self, timeout: float = 10.0) -> None:
        pass


class FakeReplay:
    def __init__(self, down: bool = False) -> None:
        self.tokens: set[str] = set()
        self.down = down

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def seen(self, provider: str, token: str) -> bool:
        if self.down:
            raise ReplayUnavailable("OperationalError")
        return token in self.tokens

    async def remember(self, provider: str, token: str, expires_at: datetime) -> None:
        self.tokens.add(token)


def _settings(**more: Any) -> Settings:
    return Settings(inbound_mailgun_signing_key=KEY, **more)


def _client(settings: Settings, publisher: FakePublisher, replay: FakeReplay, **more: Any) -> TestClient:
    app = create_app(settings, publisher=publisher, replay=replay, clock=ManualClock(NOW), **more)
    return TestClient(app)


def test_no_broker_ack_is_503_with_retry_after_and_the_token_stays_usable():
    settings = _settings()
    publisher, replay = FakePublisher(settings, fail=True), FakeReplay()
    body = mailgun_sign(recorded("mailgun_unsubscribed.json")["body"], KEY, NOW)
    with _client(settings, publisher, replay) as client:
        answer = client.post("/mailgun/events", content=body)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "7"
        assert replay.tokens == set()  # the provider's retry with this token is accepted
        publisher.fail = False
        assert client.post("/mailgun/events", content=body).status_code == 200
        assert client.post("/mailgun/events", content=body).status_code == 401
    assert len(publisher.published) == 1


def test_replay_memory_down_is_503():
    settings = _settings()
    body = mailgun_sign(recorded("mailgun_unsubscribed.json")["body"], KEY, NOW)
    with _client(settings, FakePublisher(settings), FakeReplay(down=True)) as client:
        assert client.post("/mailgun/events", content=body).status_code == 503


def test_an_invalid_address_is_skipped_not_retried_forever():
    settings = _settings()
    payload = recorded("mailgun_unsubscribed.json")["body"]
    payload["event-data"]["recipient"] = "not an address"
    publisher = FakePublisher(settings)
    with _client(settings, publisher, FakeReplay()) as client:
        assert client.post("/mailgun/events", content=mailgun_sign(payload, KEY, NOW)).status_code == 200
    assert publisher.published == []


def test_too_large_body_is_413():
    settings = _settings(inbound_max_body_bytes=1024)
    with _client(settings, FakePublisher(settings), FakeReplay()) as client:
        assert client.post("/mailgun/events", content=b"x" * 2048).status_code == 413


def test_sendgrid_and_ses_endpoints_are_off_without_their_keys():
    settings = _settings()
    with _client(settings, FakePublisher(settings), FakeReplay()) as client:
        assert client.post("/sendgrid/events", content=b"[]").status_code == 404
        assert client.post("/ses/sns", content=b"{}").status_code == 404


@pytest.mark.parametrize("status", [200, 500])
def test_sns_subscription_is_confirmed_by_get_of_the_subscribe_url_when_enabled(
    tmp_path: Path, status: int, expected_errors
):
    expected_errors.allow("SNS subscription confirmation failed")
    signer = SnsSigner.generate()
    settings = _settings(
        inbound_sns_certificate=signer.write_certificate(tmp_path),
        inbound_sns_topic_arns=[TOPIC],
        inbound_sns_confirm_subscriptions=True,
    )
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(status, text="<ConfirmSubscriptionResponse/>")

    confirm = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    data = recorded("sns_subscription_confirmation.json")
    body = json.dumps(signer.sign(data["body"], NOW))
    with _client(settings, FakePublisher(settings), FakeReplay(), confirm_client=confirm) as client:
        reply = client.post("/ses/sns", content=body, headers=data["headers"])
    assert reply.status_code == (200 if status == 200 else 503)
    assert asked == [data["body"]["SubscribeURL"]]


def test_a_client_past_its_refusal_budget_gets_429_before_any_signature_check():
    settings = _settings(inbound_refusal_burst=3, inbound_refusals_per_minute=60)
    clock = ManualClock(NOW)
    publisher = FakePublisher(settings)
    forged = mailgun_sign(recorded("mailgun_unsubscribed.json")["body"], "not-the-key", NOW)
    good = mailgun_sign(recorded("mailgun_unsubscribed.json")["body"], KEY, NOW)
    app = create_app(settings, publisher=publisher, replay=FakeReplay(), clock=clock)
    with TestClient(app) as client:
        assert [client.post("/mailgun/events", content=forged).status_code for _ in range(3)] == [401] * 3
        throttled = client.post("/mailgun/events", content=good)  # even a good one, from this client
        assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"
        assert publisher.published == []
        clock.advance(timedelta(seconds=1))  # 60 a minute: one refusal back per second
        assert client.post("/mailgun/events", content=good).status_code == 200
        assert len(publisher.published) == 1


def test_accepted_webhooks_never_count_against_the_refusal_budget():
    settings = _settings(inbound_refusal_burst=1)
    publisher = FakePublisher(settings)
    payload = recorded("mailgun_unsubscribed.json")["body"]
    with _client(settings, publisher, FakeReplay()) as client:
        for i in range(5):  # a fresh token each: each a valid delivery
            payload["event-data"]["id"] = f"evt-{i}"
            body = mailgun_sign(payload, KEY, NOW)
            assert client.post("/mailgun/events", content=body).status_code == 200
    assert len(publisher.published) == 5
