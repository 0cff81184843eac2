"""Refusals that name no item, and partners' bad data (issue #10, pipeline).

A permanent 4xx that names no address must not reject the whole chunk: the connectors
split the batch and reject only what is refused alone, with the provider's reason. A 2xx
whose body is not the documented shape becomes a rejection with its reason, never a
crash and never a false APPLIED. The stand-ins' own handlers answer through
``httpx.MockTransport``; a counter measures how many calls the search costs.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.common.clock import ManualClock
from services.common.contract import AckStatus
from services.common.errors import ConfigurationError, RetriableError
from services.common.settings import PartnerEndpoint
from services.connectors.email_provider import EmailProviderConnector
from services.connectors.kit import Command, IncompleteBatch, Outcome
from services.connectors.third_party_sharing import ThirdPartySharingConnector
from services.domain.identity import sha256_hex
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.partners_api import PartnersStandin
from services.standins.web import App, Request, Response
from tests.support.commands import make_command

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
INVALID = "invalid email address in recipient_emails"


def cmd(destination: str, **fields: object) -> Command:
    return make_command(NOW, destination, **fields)


class Counted:
    """An ``httpx.MockTransport`` routing to a stand-in's handler, counting the calls;
    ``fail_after`` calls, every further one is answered 503."""

    def __init__(self, app: App, fail_after: int | None = None) -> None:
        self.app = app
        self.calls = 0
        self.fail_after = fail_after

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            return httpx.Response(503, json={"error": "down"}, headers={"Retry-After": "2"})
        answer = self.app(
            Request(
                request.method,
                request.url.path,
                {k.lower(): v for k, v in request.headers.items()},
                request.content,
            )
        )
        if isinstance(answer.body, bytes):
            return httpx.Response(answer.status, content=answer.body, headers=dict(answer.headers))
        return httpx.Response(answer.status, json=answer.body, headers=dict(answer.headers))

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


def esp(
    standin: EmailProviderStandin, fail_after: int | None = None
) -> tuple[EmailProviderConnector, Counted]:
    counted = Counted(standin.handle, fail_after)
    return EmailProviderConnector("http://esp", SecretStr("tok"), counted.client(), ManualClock(NOW)), counted


def by_id(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.command_id: o for o in outcomes}


def search_budget(size: int, refused: int = 1) -> int:
    """The first call, plus two calls per level of halving for each refused item."""
    return 1 + 2 * refused * math.ceil(math.log2(size))


# --- email provider: a 4xx naming no address ----------------------------------------------------
def test_one_unnamed_refusal_among_1000_rejects_only_that_address_within_log2_calls() -> None:
    commands = [cmd("email_provider", email=f"user{i}@example.com") for i in range(1000)]
    bad = commands[637]
    standin = EmailProviderStandin(token="tok", refused_unnamed={bad.email or "": INVALID})
    connector, counted = esp(standin)

    outcomes = by_id(connector.apply(commands))

    assert outcomes[bad.command_id] == Outcome.rejected(
        bad.command_id, f"email provider: HTTP 400: {INVALID}"
    )
    assert Counter(o.status for o in outcomes.values()) == {AckStatus.APPLIED: 999, AckStatus.REJECTED: 1}
    assert set(standin.suppressed) == {c.email for c in commands} - {bad.email}
    assert counted.calls <= search_budget(1000), counted.calls
    assert Counter(standin.received.values()) == {1: 999}  # every good address accepted once


def test_named_and_unnamed_refusals_in_one_batch() -> None:
    commands = [cmd("email_provider", email=f"user{i}@example.com") for i in range(64)]
    unnamed = {commands[i].email or "": INVALID for i in (3, 40)}
    named = {commands[i].email or "": "hard bounce" for i in (10, 41)}
    standin = EmailProviderStandin(token="tok", rejected=named, refused_unnamed=unnamed)
    connector, counted = esp(standin)

    outcomes = by_id(connector.apply(commands))

    rejected = {
        c.email: outcomes[c.command_id].detail
        for c in commands
        if outcomes[c.command_id].status is AckStatus.REJECTED
    }
    assert rejected == {
        **{e: f"email provider: HTTP 400: {INVALID}" for e in unnamed},
        **{e: "email provider: hard bounce" for e in named},
    }
    assert set(standin.suppressed) == {c.email for c in commands} - set(unnamed) - set(named)
    assert counted.calls <= search_budget(64, refused=4), counted.calls


def test_a_transient_failure_during_the_search_keeps_what_was_found() -> None:
    commands = [cmd("email_provider", email=f"user{i}@example.com") for i in range(16)]
    standin = EmailProviderStandin(token="tok", refused_unnamed={commands[15].email or "": INVALID})
    # Calls: all 16 (400), the left 8 (201): so the refusal is in the right 8, which is split
    # without being sent: its left 4 (201); then the provider goes away (503).
    connector, _ = esp(standin, fail_after=3)

    with pytest.raises(IncompleteBatch) as partial:
        connector.apply(commands)

    kept = by_id(partial.value.outcomes)
    assert set(kept) == {c.command_id for c in commands[:12]}
    assert {o.status for o in kept.values()} == {AckStatus.APPLIED}
    assert partial.value.retry_after == 2.0


# --- email provider: bad data in a 2xx ---------------------------------------------------------
@pytest.mark.parametrize(
    "garbage",
    [
        b"<html>proxy says hi</html>",
        b"\xff\xfe not utf-8",
        [],
        {"added": "everyone"},
        {"added": [1, 2]},
        {"status": "ok"},
        "null",
    ],
)
def test_a_2xx_in_an_undocumented_shape_is_a_rejection_with_its_reason(garbage: Any) -> None:
    commands = [cmd("email_provider", email=f"user{i}@example.com") for i in range(3)]
    connector, _ = esp(EmailProviderStandin(token="tok", garbage=garbage))

    outcomes = connector.apply(commands)  # never raises

    assert {o.command_id for o in outcomes} == {c.command_id for c in commands}
    assert {o.status for o in outcomes} == {AckStatus.REJECTED}
    detail = outcomes[0].detail or ""
    assert detail.startswith("email provider: 2xx answer is not the documented") and "@" not in detail


def test_a_4xx_body_that_is_not_json_is_still_a_reason() -> None:
    def teapot(request: Request) -> Response:
        return Response(418, b"\xff\x00 short and stout")

    counted = Counted(teapot)
    connector = EmailProviderConnector("http://esp", SecretStr("tok"), counted.client(), ManualClock(NOW))
    [outcome] = connector.apply([cmd("email_provider", email="a@example.com")])
    assert outcome.status is AckStatus.REJECTED and (outcome.detail or "").startswith(
        "email provider: HTTP 418"
    )


def test_an_answer_that_cannot_be_decoded_is_transient_not_a_crash() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    client = httpx.Client(transport=httpx.MockTransport(broken))
    connector = EmailProviderConnector("http://esp", SecretStr("tok"), client, ManualClock(NOW))
    with pytest.raises(RetriableError, match="could not be read"):
        connector.apply([cmd("email_provider", email="a@example.com")])


# --- third-party sharing -------------------------------------------------------------------------
def partners(tokens: dict[str, str]) -> list[PartnerEndpoint]:
    return [
        PartnerEndpoint(name=n, url=f"http://partners/partners/{n}", token=SecretStr(t))
        for n, t in tokens.items()
    ]


def hashed(i: int) -> Command:
    return cmd("third_party_sharing", email_sha256=sha256_hex(f"user{i}@example.com"), customer_id=f"c-{i}")


def third_party(
    standin: PartnersStandin, tokens: dict[str, str]
) -> tuple[ThirdPartySharingConnector, Counted]:
    counted = Counted(standin.handle)
    return ThirdPartySharingConnector(partners(tokens), counted.client(), ManualClock(NOW)), counted


def test_a_partner_refusing_one_opt_out_among_1000_rejects_only_that_one() -> None:
    tokens = {"adnetwork": "a", "databroker": "b"}
    commands = [hashed(i) for i in range(1000)]
    bad = commands[123]
    standin = PartnersStandin(tokens, refused_unnamed={bad.email_sha256 or "": "hash on our block list"})
    connector, counted = third_party(standin, tokens)

    outcomes = by_id(connector.apply(commands))

    assert outcomes[bad.command_id] == Outcome.rejected(
        bad.command_id,
        "adnetwork: HTTP 400: hash on our block list; databroker: HTTP 400: hash on our block list",
    )
    assert Counter(o.status for o in outcomes.values()) == {AckStatus.APPLIED: 999, AckStatus.REJECTED: 1}
    for partner in standin.partners.values():
        assert set(partner.opt_outs) == {c.command_id for c in commands} - {bad.command_id}
    assert counted.calls <= 2 * search_budget(1000), counted.calls


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json at all",
        {"accepted": [], "rejected": [{"reference": ["unhashable"]}]},
        {"accepted": [], "rejected": "all of them"},
        {"accepted": "yes"},
        {"thanks": True},
        ["a", "b"],
    ],
)
def test_a_partners_undocumented_answer_is_a_rejection_not_a_crash(garbage: Any) -> None:
    tokens = {"adnetwork": "a"}
    commands = [hashed(i) for i in range(3)]
    connector, _ = third_party(PartnersStandin(tokens, garbage=garbage), tokens)

    outcomes = connector.apply(commands)

    assert {o.command_id for o in outcomes} == {c.command_id for c in commands}
    assert {o.status for o in outcomes} == {AckStatus.REJECTED}
    assert (outcomes[0].detail or "").startswith("adnetwork: 2xx answer is not the documented")


def test_no_partners_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="OPTOUT_PARTNERS"):
        ThirdPartySharingConnector([], httpx.Client())
