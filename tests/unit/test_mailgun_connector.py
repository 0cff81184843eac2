"""The ``mailgun`` kind against the Mailgun stand-in's handler (``httpx.MockTransport``):
the documented call, Basic auth, the JSON array of records, the {"message"} error shape,
429 with its headers and 5xx (issue #11)."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from services.common.clock import ManualClock
from services.common.contract import AckStatus, Destination
from services.common.errors import ConfigurationError, RetriableError
from services.common.settings import Settings
from services.connectors import mailgun
from services.connectors.kit import Command, CredentialsRefused, IncompleteBatch, Outcome
from services.connectors.mailgun import MailgunConnector, rate_limit_wait
from services.standins.mailgun_api import MailgunStandin
from tests.support.commands import make_command
from tests.support.standin_transport import Routed

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
DOMAIN = "mg.example.com"


def cmd(email: str | None) -> Command:
    return make_command(NOW, "mailgun_us", email=email)


def connector(standin: MailgunStandin, key: str = KEY) -> tuple[MailgunConnector, Routed]:
    routed = Routed(standin.handle)
    return (
        MailgunConnector(
            "mailgun_us",
            SecretStr(key),
            routed.client(),
            DOMAIN,
            base_url="https://api.mailgun.test",
            clock=ManualClock(NOW),
            credentials_check_seconds=9.0,
        ),
        routed,
    )


def by_id(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.command_id: o for o in outcomes}


def test_posts_the_documented_array_with_basic_auth_and_reads_back() -> None:
    standin = MailgunStandin(api_key=KEY)
    mg, routed = connector(standin)
    commands = [cmd(f"user{i}@example.com") for i in range(3)] + [cmd(None)]

    outcomes = by_id(mg.apply(commands))

    assert [outcomes[c.command_id].status for c in commands] == [AckStatus.APPLIED] * 3 + [AckStatus.REJECTED]
    request = routed.requests[0]
    assert (request.method, request.url.path) == ("POST", f"/v3/{DOMAIN}/unsubscribes")
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()
    assert json.loads(request.content) == [
        {"address": f"user{i}@example.com", "tags": ["*"], "created_at": "Sat, 14 Mar 2026 09:26:53 GMT"}
        for i in range(3)
    ]
    assert set(standin.unsubscribed[DOMAIN]) == {f"user{i}@example.com" for i in range(3)}
    assert mg.read_back("user2@example.com") is True
    assert mg.read_back("nobody@example.com") is False  # the documented 404


def test_list_unsubscribed_follows_paging_next() -> None:
    standin = MailgunStandin(api_key=KEY)
    mg, routed = connector(standin)
    emails = {f"p{i}@example.com" for i in range(5)}
    mg.apply([cmd(e) for e in sorted(emails)])

    listed = list(mg.list_unsubscribed(page_size=2))

    assert sorted(listed) == sorted(emails) and len(listed) == 5
    assert routed.calls == 1 + 4  # the POST, three full-or-partial pages and the empty one


def test_a_named_refusal_rejects_only_that_address() -> None:
    commands = [cmd(f"user{i}@example.com") for i in range(6)]
    bad = commands[4]
    standin = MailgunStandin(api_key=KEY, rejected=[bad.email or ""])
    mg, routed = connector(standin)

    outcomes = by_id(mg.apply(commands))

    assert outcomes[bad.command_id].status is AckStatus.REJECTED
    detail = outcomes[bad.command_id].detail or ""
    assert "is not a valid address" in detail and "user4@example.com" not in detail
    assert Counter(o.status for o in outcomes.values()) == {AckStatus.APPLIED: 5, AckStatus.REJECTED: 1}
    assert routed.calls == 2


def test_a_refusal_naming_no_address_is_found_by_splitting() -> None:
    commands = [cmd(f"user{i}@example.com") for i in range(16)]
    bad = commands[3]
    standin = MailgunStandin(api_key=KEY, refused_unnamed=[bad.email or ""])
    mg, routed = connector(standin)

    outcomes = by_id(mg.apply(commands))

    assert outcomes[bad.command_id] == Outcome.rejected(
        bad.command_id, "Mailgun: HTTP 400: Invalid address in unsubscribe records"
    )
    assert Counter(o.status for o in outcomes.values()) == {AckStatus.APPLIED: 15, AckStatus.REJECTED: 1}
    assert routed.calls <= 1 + 2 * 4


def test_429_honours_retry_after() -> None:
    standin = MailgunStandin(
        api_key=KEY, rate_limit_per_second=1, monotonic=lambda: 50.5, wall_clock=lambda: NOW.timestamp() + 0.5
    )
    mg, routed = connector(standin)
    mg.apply([cmd("first@example.com")])

    with pytest.raises(IncompleteBatch) as raised:
        mg.apply([cmd("second@example.com")])

    headers = routed.requests[-1].headers  # what we sent; the answer's headers are checked below
    assert headers["authorization"].startswith("Basic ")
    assert raised.value.retry_after == 1.0 and raised.value.outcomes == []
    assert standin.answers[429] == 1


def test_rate_limit_wait_reads_retry_after_then_the_reset_header() -> None:
    now_ms = int(NOW.timestamp() * 1000)
    assert rate_limit_wait(httpx.Response(429, headers={"Retry-After": "3"}), NOW) == 3.0
    assert rate_limit_wait(httpx.Response(429, headers={"X-RateLimit-Reset": str(now_ms + 2500)}), NOW) == (
        pytest.approx(2.5)
    )
    reset_s = str(int(NOW.timestamp()) + 4)
    assert rate_limit_wait(httpx.Response(429, headers={"X-RateLimit-Reset": reset_s}), NOW) == pytest.approx(
        4.0
    )
    assert rate_limit_wait(httpx.Response(429, headers={"X-RateLimit-Reset": "6"}), NOW) == 6.0
    assert rate_limit_wait(httpx.Response(429), NOW) is None


def test_5xx_is_transient_and_rejects_nothing() -> None:
    standin = MailgunStandin(api_key=KEY, failure_rate=1.0, rng=random.Random(3))
    mg, _ = connector(standin)

    with pytest.raises(IncompleteBatch) as raised:
        mg.apply([cmd("a@example.com")])

    assert raised.value.outcomes == [] and isinstance(raised.value.cause, RetriableError)
    assert not isinstance(raised.value.cause, CredentialsRefused)
    assert set(standin.answers) <= {500, 503}
    assert DOMAIN not in standin.unsubscribed


def test_a_wrong_key_is_credentials_refused_until_the_key_works() -> None:
    standin = MailgunStandin(api_key="right")
    mg, _ = connector(standin, key="wrong")
    command = cmd("wait@example.com")

    with pytest.raises(IncompleteBatch) as raised:
        mg.apply([command])
    assert isinstance(raised.value.cause, CredentialsRefused) and raised.value.retry_after == 9.0

    standin.set_api_key("wrong")
    assert mg.apply([command]) == [Outcome.applied(command.command_id)]


def test_more_than_1000_addresses_go_in_arrays_of_at_most_1000() -> None:
    standin = MailgunStandin(api_key=KEY)
    mg, routed = connector(standin)

    outcomes = mg.apply([cmd(f"u{i}@example.com") for i in range(2001)])

    assert len(outcomes) == 2001
    assert [len(json.loads(r.content)) for r in routed.requests] == [1000, 1000, 1]


def _destination(**options: object) -> Destination:
    return Destination(
        id="mailgun_eu",
        scopes=frozenset(),
        identifiers=frozenset(),
        requires_one_of=frozenset(),
        kind="mailgun",
        options=options,
        credentials={"api_key": SecretStr("k")},
    )


def test_build_picks_the_regions_base_url() -> None:
    settings = Settings()
    eu = mailgun.build(_destination(domain=DOMAIN, region="eu"), settings)
    us = mailgun.build(_destination(domain=DOMAIN), settings)
    custom = mailgun.build(_destination(domain=DOMAIN, base_url="http://127.0.0.1:9"), settings)
    assert (eu.base_url, us.base_url, custom.base_url) == (
        "https://api.eu.mailgun.net",
        "https://api.mailgun.net",
        "http://127.0.0.1:9",
    )
    for built in (eu, us, custom):
        built.close()
    with pytest.raises(ConfigurationError, match=r"settings\.region"):
        mailgun.build(_destination(domain=DOMAIN, region="asia"), settings)
    with pytest.raises(ConfigurationError, match=r"settings\.domain"):
        mailgun.build(_destination(), settings)


def test_a_refusal_naming_a_longer_address_does_not_reject_its_suffix() -> None:
    short, long = cmd("A@example.com"), cmd("ba@example.com")
    standin = MailgunStandin(api_key=KEY, rejected=["ba@example.com"])
    mg, _ = connector(standin)

    outcomes = by_id(mg.apply([short, long]))

    assert outcomes[short.command_id].status is AckStatus.APPLIED
    assert outcomes[long.command_id].status is AckStatus.REJECTED
