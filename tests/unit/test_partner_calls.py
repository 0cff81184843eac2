"""Partners are called at the same time (``third_party_sharing.PartnerCalls``), by both
partner connectors: a batch takes as long as the slowest partner, every partner's answer is
kept, and a failure raises what calling them in turn would have raised."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from services.common.clock import ManualClock
from services.common.contract import AckStatus
from services.common.errors import RetriableError
from services.common.settings import PartnerEndpoint
from services.connectors import webhook_partners as wp
from services.connectors.kit import Command, CredentialsRefused
from services.connectors.third_party_sharing import PartnerCalls, ThirdPartySharingConnector
from services.domain.identity import sha256_hex
from tests.support.commands import make_command

NOW = datetime(2026, 12, 1, 6, 0, 0, tzinfo=UTC)
WAIT_SECONDS = 5.0


def hashed(destination: str, i: int) -> Command:
    return make_command(
        NOW, destination, email_sha256=sha256_hex(f"user{i}@example.com"), customer_id=f"c-{i}"
    )


class BothAtOnce:
    """A transport whose partners answer only once every partner's request has arrived: a
    connector that called them in turn would wait for the first answer forever (here: the
    barrier breaks after ``WAIT_SECONDS`` and the answer is a 599 the test sees)."""

    def __init__(self, partners: int, answer: dict[str, httpx.Response] | None = None) -> None:
        self.barrier = threading.Barrier(partners, timeout=WAIT_SECONDS)
        self.answer = answer or {}
        self.paths: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            return httpx.Response(599, json={"error": "partners were called one after the other"})
        for name, response in self.answer.items():
            if name in request.url.path:
                return response
        references = [r["reference"] for r in _opt_outs(request)]
        return httpx.Response(200, json={"accepted": references, "rejected": []})


def _opt_outs(request: httpx.Request) -> list[dict[str, str]]:
    body = httpx.Response(200, content=request.content).json()
    return list(body.get("opt_outs") or body.get("data", {}).get("opt_outs") or [])


def third_party(transport: BothAtOnce, names: tuple[str, ...]) -> ThirdPartySharingConnector:
    endpoints = [
        PartnerEndpoint(name=n, url=f"http://partners/partners/{n}", token=SecretStr("t")) for n in names
    ]
    client = httpx.Client(transport=httpx.MockTransport(transport.handler))
    return ThirdPartySharingConnector(endpoints, client, ManualClock(NOW))


def test_third_party_sharing_calls_its_partners_at_the_same_time() -> None:
    transport = BothAtOnce(2)
    connector = third_party(transport, ("adnet", "databroker"))
    batch = [hashed("third_party_sharing", i) for i in range(3)]
    try:
        outcomes = connector.apply(batch)
    finally:
        connector.close()
    assert {o.command_id: o.status for o in outcomes} == {c.command_id: AckStatus.APPLIED for c in batch}
    assert sorted(transport.paths) == ["/partners/adnet/opt-outs", "/partners/databroker/opt-outs"]


def test_a_failing_partner_raises_after_the_others_answered() -> None:
    down = httpx.Response(503, json={"error": "down"}, headers={"Retry-After": "3"})
    transport = BothAtOnce(2, {"databroker": down})
    connector = third_party(transport, ("adnet", "databroker"))
    try:
        with pytest.raises(RetriableError) as raised:
            connector.apply([hashed("third_party_sharing", 1)])
    finally:
        connector.close()
    assert raised.value.retry_after == 3
    assert len(transport.paths) == 2  # adnet was told too: it sees the same reference on the retry


def webhook(transport: BothAtOnce) -> wp.WebhookPartnersConnector:
    secret = b"partner-signing-key-0123456789ab"
    partners = [
        wp.Partner(n, f"https://{n}.example/webhooks/{n}", wp.HashFormat.SHA256, (secret,))
        for n in ("adnetwork", "databroker")
    ]
    client = httpx.Client(transport=httpx.MockTransport(transport.handler))
    return wp.WebhookPartnersConnector("partners", partners, client, clock=ManualClock(NOW))


class WebhookAnswers(BothAtOnce):
    def handler(self, request: httpx.Request) -> httpx.Response:
        answer = super().handler(request)
        if answer.status_code != 200:
            return answer
        references = [r["reference"] for r in _opt_outs(request)]
        return httpx.Response(
            200,
            json={"results": [{"reference": r, "status": "accepted", "reason": None} for r in references]},
        )


def test_webhook_partners_are_called_at_the_same_time() -> None:
    transport = WebhookAnswers(2)
    connector = webhook(transport)
    batch = [hashed("partners", i) for i in range(3)]
    try:
        outcomes = connector.apply(batch)
    finally:
        connector.close()
    assert {o.status for o in outcomes} == {AckStatus.APPLIED}
    assert sorted(transport.paths) == ["/webhooks/adnetwork", "/webhooks/databroker"]


def test_a_refused_signature_is_still_credentials_refused_when_another_partner_accepts() -> None:
    transport = WebhookAnswers(2, {"adnetwork": httpx.Response(401, json={"error": "invalid webhook"})})
    connector = webhook(transport)
    try:
        with pytest.raises(CredentialsRefused):
            connector.apply([hashed("partners", 1)])
    finally:
        connector.close()


def test_the_first_partners_error_in_order_is_raised_whichever_failed_first() -> None:
    calls = PartnerCalls(3, "test")
    second_failed = threading.Event()

    def call(partner: str) -> str:
        if partner == "a":
            assert second_failed.wait(WAIT_SECONDS)  # "a" fails after "b" did
            raise RetriableError("a is down")
        if partner == "b":
            second_failed.set()
            raise RetriableError("b is down")
        return partner

    try:
        with pytest.raises(RetriableError, match="a is down"):
            calls.each(["a", "b", "c"], call)
        assert calls.each(["c", "d"], lambda p: p.upper()) == ["C", "D"]  # results in partner order
    finally:
        calls.close()
