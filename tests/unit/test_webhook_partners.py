"""Signed partner webhooks (issue #11): Standard Webhooks signing checked against the
``standardwebhooks`` package's verifier (known answer), the sample receiver's refusals
(forged, stale, replayed, rotated and wrong secrets), the reply parsing, and the
``webhook_partners`` connector against the stand-in's receivers through
``httpx.MockTransport``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.common import standard_webhooks as sw
from services.common.clock import ManualClock
from services.common.contract import AckStatus, Destination, Identifier, Scope
from services.common.errors import ConfigurationError, RetriableError
from services.common.settings import Settings
from services.connectors import webhook_partners as wp
from services.connectors.kit import Command, CredentialsRefused, Outcome
from services.domain.identity import sha256_hex
from services.standins.server import webhook_partners_from
from services.standins.web import Request, Response
from services.standins.webhook_receiver import WebhookPartnersStandin, WebhookReceiver
from tests.support.commands import make_command

NOW = datetime(2026, 12, 1, 6, 0, 0, tzinfo=UTC)
OLD = sw.encode_secret(b"old-secret-key-0123456789abcdef!")
NEW = sw.encode_secret(b"new-secret-key-0123456789abcdef!")
OTHER = sw.encode_secret(b"someone-else-0123456789abcdef!!!")
BODY = b'{"type":"suppression.created","timestamp":"2026-12-01T06:00:00.000000Z","data":{"opt_outs":[]}}'


# --- signing: known answers against the standardwebhooks package ----------------------------
def test_signature_matches_the_reference_package_byte_for_byte() -> None:
    stamp = int(NOW.timestamp())
    ours = sw.sign(sw.decode_secret(NEW), "msg_abc", stamp, BODY)
    theirs = Webhook(NEW).sign("msg_abc", NOW, BODY.decode())
    assert ours == theirs
    # and the spec's formula, by hand
    key = base64.b64decode(NEW.removeprefix("whsec_"))
    digest = hmac.new(key, b"msg_abc.%d." % stamp + BODY, hashlib.sha256).digest()
    assert ours == "v1," + base64.b64encode(digest).decode()


def test_reference_verifier_accepts_our_headers_with_each_rotated_secret_alone() -> None:
    now = int(datetime.now(UTC).timestamp())  # the package reads the real clock
    headers = sw.signed_headers([sw.decode_secret(OLD), sw.decode_secret(NEW)], "msg_1", now, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (OLD, NEW):
        assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(BODY, headers)


def test_our_verifier_accepts_the_reference_packages_signature() -> None:
    stamp = int(NOW.timestamp())
    headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(stamp),
        "webhook-signature": Webhook(OLD).sign("msg_x", NOW, BODY.decode()),
    }
    assert sw.verify([sw.decode_secret(OLD)], headers, BODY, stamp) == ("msg_x", stamp)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("abc", "whsec_"),
        ("whsec_***", "base64"),
        (sw.encode_secret(b"short"), "24 to 64 bytes"),
    ],
)
def test_bad_secrets_are_refused_with_the_reason(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        sw.decode_secret(secret)


# --- the sample receiver ---------------------------------------------------------------------
def delivery(secrets: Sequence[str], body: bytes, at: float, msg_id: str = "msg_1") -> dict[str, str]:
    return sw.signed_headers([sw.decode_secret(s) for s in secrets], msg_id, int(at), body)


def event(*opt_outs: Mapping[str, str]) -> bytes:
    return wp.event_body(list(opt_outs), NOW)


EMAIL_HASH = sha256_hex("jane@example.com")


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def receiver(secrets: Sequence[str] = (NEW,)) -> tuple[WebhookReceiver, Clock]:
    clock = Clock()
    return WebhookReceiver(list(secrets), clock=clock), clock


def test_receiver_accepts_a_signed_event_and_answers_per_reference() -> None:
    rx, clock = receiver()
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    answer = rx.receive(delivery([NEW], body, clock.now), body)
    assert answer.status == 200
    assert answer.body == {"results": [{"reference": "r1", "status": "accepted", "reason": None}]}
    assert set(rx.held) == {"r1"}


def test_forged_body_is_refused() -> None:
    rx, clock = receiver()
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    headers = delivery([NEW], body, clock.now)
    forged = body.replace(b"r1", b"r2")
    answer = rx.receive(headers, forged)
    assert (answer.status, answer.body["error"]) == (401, "invalid webhook: no matching signature")
    assert rx.held == {}


def test_wrong_secret_and_missing_headers_are_refused() -> None:
    rx, clock = receiver()
    assert rx.receive(delivery([OTHER], BODY, clock.now), BODY).status == 401
    headers = delivery([NEW], BODY, clock.now)
    del headers["webhook-signature"]
    assert rx.receive(headers, BODY).status == 401


@pytest.mark.parametrize("skew", [-301, 301])
def test_stale_or_future_timestamps_are_refused_even_when_correctly_signed(skew: int) -> None:
    rx, clock = receiver()
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    answer = rx.receive(delivery([NEW], body, clock.now + skew), body)
    assert answer.status == 401
    assert "too old" in answer.body["error"] or "too new" in answer.body["error"]
    assert rx.receive(delivery([NEW], body, clock.now + (299 if skew > 0 else -299)), body).status == 200


def test_rotation_old_and_new_secrets_are_both_valid() -> None:
    rx, clock = receiver([NEW, OLD])  # the receiver holds both during the rotation
    for i, signers in enumerate(([OLD], [NEW], [OLD, NEW], [OTHER, NEW])):
        body = event({"reference": f"r{i}", "email_sha256": EMAIL_HASH})
        assert rx.receive(delivery(signers, body, clock.now, f"msg_{i}"), body).status == 200, signers
    only_new, _ = receiver([NEW])  # after the rotation the old one is refused
    assert only_new.receive(delivery([OLD], BODY, clock.now), BODY).status == 401


def test_a_replayed_webhook_id_is_not_processed_again() -> None:
    refusing: dict[str, str] = {}
    clock = Clock()
    rx = WebhookReceiver([NEW], decide=lambda o: refusing.get(o["reference"]), clock=clock)
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    first = rx.receive(delivery([NEW], body, clock.now, "msg_7"), body)
    refusing["r1"] = "would be refused now"
    clock.now += 60  # a replay a minute later, freshly timestamped by the sender or not
    again = rx.receive(delivery([NEW], body, clock.now, "msg_7"), body)
    assert again == first and rx.replays == 1  # the first answer, not a second processing
    other = event({"reference": "r2", "email_sha256": EMAIL_HASH})
    assert rx.receive(delivery([NEW], other, clock.now, "msg_7"), other).status == 409
    assert set(rx.held) == {"r1"}


def test_the_receiver_forgets_ids_only_when_their_timestamps_can_no_longer_pass() -> None:
    rx, clock = receiver()
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    rx.receive(delivery([NEW], body, clock.now, "msg_old"), body)
    clock.now += 599
    rx.receive(delivery([NEW], body, clock.now, "msg_new"), body)
    assert "msg_old" in rx.seen
    clock.now += 2
    rx.receive(delivery([NEW], body, clock.now, "msg_newer"), body)
    assert "msg_old" not in rx.seen and "msg_new" in rx.seen


@pytest.mark.parametrize(
    "opt_out",
    [
        {"reference": "r1", "email": "jane@example.com"},
        {"reference": "r1", "email_sha256": "JANE"},
        {"email_sha256": EMAIL_HASH},
    ],
)
def test_receiver_refuses_anything_but_hashed_opt_outs(opt_out: Mapping[str, str]) -> None:
    rx, clock = receiver()
    body = event(opt_out)
    assert rx.receive(delivery([NEW], body, clock.now), body).status == 400


# --- reply parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "ok",
        {"accepted": ["r1"]},
        {"results": "all good"},
        {"results": [{"reference": "r1", "status": "ok"}]},
        {"results": [{"reference": 1, "status": "accepted"}]},
        {"results": [{"reference": "r1", "status": "rejected", "reason": 42}]},
        {"results": ["r1"]},
    ],
)
def test_undocumented_replies_are_not_understood(body: Any) -> None:
    assert wp.partner_results("p", ["r1"], body) is None


def test_reply_rejections_and_missing_results_are_refusals_with_reasons() -> None:
    body = {
        "results": [
            {"reference": "r1", "status": "accepted"},
            {"reference": "r2", "status": "rejected", "reason": "hash unknown to us"},
            {"reference": "zz", "status": "rejected", "reason": "not sent"},
        ]
    }
    refusals = wp.partner_results("p", ["r1", "r2", "r3"], body)
    assert refusals == {
        "r2": "p: hash unknown to us",
        "r3": "p: answer names no result for this opt-out; outcome unknown",
    }


# --- the connector ---------------------------------------------------------------------------
SECRETS = {"adnetwork": [NEW, OLD], "databroker": [OTHER]}


class Routed:
    """``httpx.MockTransport`` to a ``WebhookPartnersStandin``; a ``script`` of answers
    (status, headers) may precede the stand-in's."""

    def __init__(self, standin: WebhookPartnersStandin, script: list[httpx.Response] | None = None) -> None:
        self.standin = standin
        self.script = list(script or [])
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            return self.script.pop(0)
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer: Response = self.standin.handle(Request("POST", request.url.path, headers, request.content))
        if isinstance(answer.body, bytes):
            return httpx.Response(answer.status, content=answer.body, headers=dict(answer.headers))
        return httpx.Response(answer.status, json=answer.body, headers=dict(answer.headers))


def partners(hash_format: wp.HashFormat = wp.HashFormat.SHA256) -> list[wp.Partner]:
    return [
        wp.Partner(
            name,
            f"https://{name}.example/webhooks/{name}",
            hash_format,
            tuple(sw.decode_secret(s) for s in secrets),
            b"partner-hash-key-0123" if hash_format is wp.HashFormat.HMAC_SHA256 else None,
        )
        for name, secrets in SECRETS.items()
    ]


def connector(
    standin: WebhookPartnersStandin,
    script: list[httpx.Response] | None = None,
    max_batch: int = wp.DEFAULT_BATCH,
    hash_format: wp.HashFormat = wp.HashFormat.SHA256,
) -> tuple[wp.WebhookPartnersConnector, Routed]:
    routed = Routed(standin, script)
    client = httpx.Client(transport=httpx.MockTransport(routed.handler))
    return (
        wp.WebhookPartnersConnector(
            "partners", partners(hash_format), client, max_batch=max_batch, clock=ManualClock(NOW)
        ),
        routed,
    )


def standin(**knobs: Any) -> WebhookPartnersStandin:
    return WebhookPartnersStandin(
        {"adnetwork": [OLD], "databroker": [OTHER]}, clock=lambda: NOW.timestamp(), **knobs
    )


def cmd(i: int) -> Command:
    return make_command(
        NOW,
        "partners",
        email_sha256=sha256_hex(f"user{i}@example.com"),
        phone_sha256=sha256_hex(f"+1415555{i:04d}"),
        customer_id=f"C-{i}",
    )


def statuses(outcomes: list[Outcome]) -> dict[str, tuple[AckStatus, str | None]]:
    return {o.command_id: (o.status, o.detail) for o in outcomes}


def test_applied_only_when_every_partner_accepted_and_only_hashes_leave() -> None:
    partners_standin = standin()
    conn, routed = connector(partners_standin)
    batch = [cmd(i) for i in range(5)]
    outcomes = conn.apply(batch)
    assert statuses(outcomes) == {c.command_id: (AckStatus.APPLIED, None) for c in batch}
    assert len(routed.requests) == 2  # one signed delivery per partner
    for name, state in partners_standin.partners.items():
        assert set(state.receiver.held) == {c.command_id for c in batch}, name
        held = state.receiver.held[batch[0].command_id]
        assert held["email_sha256"] == batch[0].email_sha256
        assert held["customer_id_sha256"] == sha256_hex("C-0")
    for request in routed.requests:
        text = request.content.decode()
        assert "@" not in text and "C-0" not in text and "+1415555" not in text
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"] == wp.webhook_id(request.content)


def test_one_partner_refusing_one_reference_rejects_it_with_that_partners_reason() -> None:
    batch = [cmd(i) for i in range(4)]
    assert batch[2].email_sha256 is not None
    refusing = standin(refused={batch[2].email_sha256: "opted back in on our side"})
    conn, _ = connector(refusing)
    outcomes = statuses(conn.apply(batch))
    assert outcomes[batch[2].command_id][0] is AckStatus.REJECTED
    detail = outcomes[batch[2].command_id][1] or ""
    assert "adnetwork: opted back in on our side" in detail and "databroker" in detail  # both refused it
    assert all(outcomes[c.command_id] == (AckStatus.APPLIED, None) for c in batch if c is not batch[2])


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_answers_retry_with_the_partners_retry_after(status: int) -> None:
    conn, _ = connector(standin(), [httpx.Response(status, headers={"Retry-After": "7"})])
    with pytest.raises(RetriableError) as raised:
        conn.apply([cmd(1)])
    assert raised.value.retry_after == 7 and not isinstance(raised.value, CredentialsRefused)


def test_an_unreachable_partner_is_retried() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    conn = wp.WebhookPartnersConnector(
        "partners", partners(), httpx.Client(transport=httpx.MockTransport(down))
    )
    with pytest.raises(RetriableError, match="unreachable"):
        conn.apply([cmd(1)])


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_signature_is_credentials_refused(status: int) -> None:
    conn, _ = connector(standin(), [httpx.Response(status, json={"error": "invalid webhook"})])
    with pytest.raises(CredentialsRefused) as raised:
        conn.apply([cmd(1)])
    assert raised.value.retry_after == 60


def test_the_stand_ins_own_401_for_a_wrong_secret_is_credentials_refused() -> None:
    wrong = WebhookPartnersStandin(
        {"adnetwork": [OTHER], "databroker": [OTHER]}, clock=lambda: NOW.timestamp()
    )
    conn, _ = connector(wrong)
    with pytest.raises(CredentialsRefused):
        conn.apply([cmd(1)])


def test_a_refusal_naming_no_reference_is_narrowed_down_by_splitting() -> None:
    batch = [cmd(i) for i in range(16)]
    bad = batch[11].phone_sha256
    assert bad is not None
    conn, routed = connector(standin(refused_unnamed={bad: "malformed opt-out"}))
    outcomes = statuses(conn.apply(batch))
    assert [c for c in batch if outcomes[c.command_id][0] is AckStatus.REJECTED] == [batch[11]]
    assert "HTTP 400: malformed opt-out" in (outcomes[batch[11].command_id][1] or "")
    assert len(routed.requests) <= 2 * (1 + 2 * 4)  # log2(16) levels, both partners


@pytest.mark.parametrize("garbage", [b"<html>ok</html>", {"ok": True}, ["r1"]])
def test_an_undocumented_2xx_rejects_with_the_reason_never_applied(garbage: Any) -> None:
    conn, _ = connector(standin(garbage=garbage))
    batch = [cmd(1), cmd(2)]
    for status, detail in statuses(conn.apply(batch)).values():
        assert status is AckStatus.REJECTED
        assert "not the documented {results: [...]}" in (detail or "")


def test_batches_are_cut_at_max_batch() -> None:
    conn, routed = connector(standin(), max_batch=3)
    conn.apply([cmd(i) for i in range(7)])
    # the partners are called at the same time, so only each partner's own order is fixed
    sizes: dict[str, list[int]] = {}
    for r in routed.requests:
        sizes.setdefault(r.url.host, []).append(len(json.loads(r.content)["data"]["opt_outs"]))
    assert sizes == {"adnetwork.example": [3, 3, 1], "databroker.example": [3, 3, 1]}


def test_hmac_format_sends_keyed_hashes_of_the_sha256() -> None:
    partners_standin = standin()
    conn, routed = connector(partners_standin, hash_format=wp.HashFormat.HMAC_SHA256)
    one = cmd(1)
    assert statuses(conn.apply([one]))[one.command_id] == (AckStatus.APPLIED, None)
    [opt_out] = json.loads(routed.requests[0].content)["data"]["opt_outs"]
    assert one.email_sha256 is not None
    expected = hmac.new(b"partner-hash-key-0123", one.email_sha256.encode(), hashlib.sha256).hexdigest()
    assert opt_out["email_hmac_sha256"] == expected
    assert set(opt_out) == {"reference", "email_hmac_sha256", "phone_hmac_sha256", "customer_id_hmac_sha256"}


def test_the_same_event_keeps_its_webhook_id_across_retries_and_the_receiver_answers_once() -> None:
    partners_standin = standin()
    conn, routed = connector(partners_standin)
    batch = [cmd(1)]
    conn.apply(batch)
    conn.apply(batch)  # e.g. the batch retried because another partner failed
    ids: dict[str, list[str]] = {}  # per partner: the partners are called at the same time
    for r in routed.requests:
        ids.setdefault(r.url.host, []).append(r.headers["webhook-id"])
    assert len(ids) == 2 and all(len(sent) == 2 and sent[0] == sent[1] for sent in ids.values())
    assert all(p.receiver.replays == 1 for p in partners_standin.partners.values())


def test_a_command_without_identifiers_is_rejected_without_a_call() -> None:
    conn, routed = connector(standin())
    bare = make_command(NOW, "partners")
    assert statuses(conn.apply([bare]))[bare.command_id][0] is AckStatus.REJECTED
    assert routed.requests == []


# --- building from a destination -------------------------------------------------------------
def destination(options: Mapping[str, Any], **credentials: str) -> Destination:
    return Destination(
        id="partners",
        scopes=frozenset({Scope.THIRD_PARTY_SHARING}),
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL_SHA256}),
        requires_one_of=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL_SHA256}),
        kind=wp.KIND,
        options=options,
        credentials={k: SecretStr(v) for k, v in credentials.items()},
    )


def test_build_reads_partners_and_every_rotated_secret() -> None:
    dest = destination(
        {
            "partners": [
                {"name": "adnetwork", "url": "https://hooks.adnetwork.example/optout"},
                {
                    "name": "broker",
                    "url": "http://127.0.0.1:18090/webhooks/broker",
                    "hash_format": "hmac_sha256",
                },
            ],
            "max_batch": 200,
        },
        adnetwork_signing_secret=f"{NEW}  {OLD}",
        broker_signing_secret=OTHER,
        broker_hash_key="a-long-enough-hash-key",
    )
    built = wp.build(dest, Settings())
    try:
        assert built.destination == "partners" and built.max_batch == 200
        assert [p.keys for p in built.partners] == [
            (sw.decode_secret(NEW), sw.decode_secret(OLD)),
            (sw.decode_secret(OTHER),),
        ]
        assert built.partners[1].hash_key == b"a-long-enough-hash-key"
    finally:
        built.close()


@pytest.mark.parametrize(
    ("options", "credentials", "message"),
    [
        ({"partners": []}, {}, "settings.partners: Tuple should have at least 1 item"),
        ({"partners": [{"name": "a", "url": "http://a.example/x"}]}, {}, "settings.partners.0.url"),
        (
            {"partners": [{"name": "a", "url": "https://a.example/x"}]},
            {},
            "needs credential 'a_signing_secret'",
        ),
        (
            {"partners": [{"name": "a", "url": "https://a.example/x"}]},
            {"a_signing_secret": "not-a-secret"},
            "credential 'a_signing_secret': a signing secret must look like whsec_",
        ),
        (
            {"partners": [{"name": "a", "url": "https://a.example/x", "hash_format": "hmac_sha256"}]},
            {"a_signing_secret": NEW},
            "needs credential 'a_hash_key'",
        ),
        (
            {"partners": [{"name": "a", "url": "https://a.example/x"}] * 2},
            {"a_signing_secret": NEW},
            "partner names must be unique",
        ),
        (
            {"partners": [{"name": "a", "url": "https://a.example/x"}], "ca_bundle": "/nonexistent.pem"},
            {"a_signing_secret": NEW},
            "settings.ca_bundle: no file",
        ),
        (
            {"partners": [{"name": "a", "url": "https://a.example/x", "token": "x"}]},
            {},
            "settings.partners.0.token",
        ),
    ],
)
def test_build_errors_are_one_clear_line(
    options: Mapping[str, Any], credentials: Mapping[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        wp.build(destination(options, **credentials), Settings())
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert NEW not in text


def test_a_ca_bundle_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    dest = destination(
        {"partners": [{"name": "a", "url": "https://a.example/x"}], "ca_bundle": str(bogus)},
        a_signing_secret=NEW,
    )
    with pytest.raises(ConfigurationError, match="not a PEM CA bundle"):
        wp.build(dest, Settings())


def test_stale_clock_on_our_side_is_refused_by_the_receiver() -> None:
    """A sender whose clock is 10 minutes behind is refused (401), hence CredentialsRefused
    with its reason logged: the operator must fix the clock, nothing is rejected."""
    conn, _ = connector(standin())
    conn.clock = ManualClock(NOW - timedelta(minutes=10))
    with pytest.raises(CredentialsRefused):
        conn.apply([cmd(1)])


@pytest.mark.expected_errors("partner endpoint refused the URL")
@pytest.mark.parametrize("status", [404, 405, 410])
def test_a_wrong_url_is_retried_never_rejected(status: int) -> None:
    conn, _ = connector(standin(), [httpx.Response(status, json={"error": "gone"})])
    with pytest.raises(RetriableError, match="check its URL") as raised:
        conn.apply([cmd(1)])
    assert not isinstance(raised.value, CredentialsRefused)


def test_optout_run_standins_serves_the_dev_partners_with_their_dev_secrets() -> None:
    settings = Settings()
    served = webhook_partners_from(settings)
    assert set(served.partners) == set(settings.standin_webhook_secrets) == {"adnetwork", "databroker"}
    secret = settings.standin_webhook_secrets["adnetwork"]
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    headers = delivery([secret], body, datetime.now(UTC).timestamp())
    answer = served.handle(Request("POST", "/webhooks/adnetwork", headers, body))
    assert answer.status == 200


# --- the sample receiver in docs/destinations.md ---------------------------------------------
def docs_receiver() -> dict[str, Any]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "destinations.md").read_text()
    listing = text.split("### The sample receiver", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(listing, "docs/destinations.md", "exec"), namespace)
    return namespace


def test_the_documented_sample_receiver_verifies_and_refuses_like_ours() -> None:
    docs = docs_receiver()
    refused, receive = docs["Refused"], docs["receive"]
    now = NOW.timestamp()
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    good = delivery([NEW, OLD], body, now)  # signed during a rotation
    expected = {"results": [{"reference": "r1", "status": "accepted", "reason": None}]}
    assert receive([OLD], good, body, now) == expected
    assert receive([NEW], delivery([NEW], body, now, "msg_2"), body, now) == expected
    assert receive([NEW], good, body, now + 60) == expected  # replay: first answer, not reprocessed
    other = event({"reference": "r2", "email_sha256": EMAIL_HASH})
    cases = [
        (delivery([NEW], other, now, "msg_1"), other, "reused"),  # same id, another body
        (delivery([NEW], body, now, "msg_3"), body.replace(b"r1", b"r9"), "no matching signature"),  # forged
        (delivery([OTHER], body, now, "msg_4"), body, "no matching signature"),  # wrong secret
        (delivery([NEW], body, now - 301, "msg_5"), body, "tolerance"),  # stale
        ({**delivery([NEW], body, now, "msg_6"), "webhook-signature": "v1,***"}, body, "no matching"),
        ({"webhook-id": "msg_7"}, body, "missing"),
    ]
    for headers, sent, why in cases:
        with pytest.raises(refused, match=why):
            receive([NEW], headers, sent, now)


def test_the_stand_in_refuses_a_forged_delivery_before_any_test_knob() -> None:
    body = event({"reference": "r1", "email_sha256": EMAIL_HASH})
    served = standin(refused_unnamed={EMAIL_HASH: "x"}, garbage={"ok": True})
    forged = delivery([NEW], body, NOW.timestamp())  # adnetwork holds OLD only
    answer = served.handle(Request("POST", "/webhooks/adnetwork", forged, body))
    assert answer.status == 401
