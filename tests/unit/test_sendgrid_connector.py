"""The ``sendgrid`` kind against the SendGrid stand-in's handler (``httpx.MockTransport``):
the documented calls, bodies, error shapes, rate-limit headers and 5xx (issue #11)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from services.common.clock import ManualClock
from services.common.contract import AckStatus, Destination
from services.common.errors import ConfigurationError, RetriableError
from services.common.settings import Settings
from services.connectors import sendgrid
from services.connectors.kit import Command, CredentialsRefused, IncompleteBatch, Outcome
from services.connectors.sendgrid import SendGridConnector, rate_limit_wait
from services.standins.sendgrid_api import SendGridStandin
from services.standins.web import Response
from tests.support.commands import make_command
from tests.support.standin_transport import Routed

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
KEY = "sg-key"


def cmd(email: str | None) -> Command:
    return make_command(NOW, "sendgrid_eu", email=email)


def connector(
    standin: SendGridStandin, key: str = KEY, group_id: int | None = None
) -> tuple[SendGridConnector, Routed]:
    routed = Routed(standin.handle)
    return (
        SendGridConnector(
            "sendgrid_eu",
            SecretStr(key),
            routed.client(),
            base_url="https://api.sendgrid.test",
            group_id=group_id,
            clock=ManualClock(NOW),
            credentials_check_seconds=7.0,
        ),
        routed,
    )


def by_id(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.command_id: o for o in outcomes}


def test_adds_to_global_suppressions_with_the_documented_request_and_reads_back() -> None:
    standin = SendGridStandin(api_key=KEY)
    sg, routed = connector(standin)
    commands = [cmd(f"user{i}@example.com") for i in range(3)] + [cmd(None)]

    outcomes = by_id(sg.apply(commands))

    assert [outcomes[c.command_id].status for c in commands] == [AckStatus.APPLIED] * 3 + [AckStatus.REJECTED]
    request = routed.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v3/asm/suppressions/global")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {"recipient_emails": [f"user{i}@example.com" for i in range(3)]}
    assert set(standin.suppressed) == {f"user{i}@example.com" for i in range(3)}
    assert sg.read_back("user1@example.com") is True
    assert sg.read_back("nobody@example.com") is False
    assert routed.requests[-1].url.path == "/v3/asm/suppressions/global/nobody@example.com"


def test_an_address_already_suppressed_is_accepted_again_and_applied() -> None:
    """SendGrid's 201 lists every address added, old or new: no ALREADY_SUPPRESSED answer."""
    standin = SendGridStandin(api_key=KEY)
    sg, _ = connector(standin)
    first = cmd("again@example.com")
    sg.apply([first])
    second = cmd("again@example.com")

    assert sg.apply([second]) == [Outcome.applied(second.command_id)]
    assert standin.received["again@example.com"] == 2


def test_group_id_also_adds_to_the_unsubscribe_group() -> None:
    standin = SendGridStandin(api_key=KEY)
    sg, routed = connector(standin, group_id=42)
    commands = [cmd(f"g{i}@example.com") for i in range(2)]

    outcomes = sg.apply(commands)

    assert {o.status for o in outcomes} == {AckStatus.APPLIED}
    assert [r.url.path for r in routed.requests] == [
        "/v3/asm/suppressions/global",
        "/v3/asm/groups/42/suppressions",
    ]
    assert standin.groups == {42: {"g0@example.com", "g1@example.com"}}


def test_a_named_refusal_rejects_only_that_address() -> None:
    commands = [cmd(f"user{i}@example.com") for i in range(5)]
    bad = commands[2]
    standin = SendGridStandin(api_key=KEY, rejected=[bad.email or ""])
    sg, routed = connector(standin)

    outcomes = by_id(sg.apply(commands))

    assert outcomes[bad.command_id].status is AckStatus.REJECTED
    detail = outcomes[bad.command_id].detail or ""
    assert "is not a valid email address" in detail and "user2@example.com" not in detail  # no raw PII
    assert Counter(o.status for o in outcomes.values()) == {AckStatus.APPLIED: 4, AckStatus.REJECTED: 1}
    assert routed.calls == 2  # the named one dropped, the rest sent once more
    assert set(standin.suppressed) == {c.email for c in commands} - {bad.email}


def test_a_refusal_naming_no_address_is_found_by_splitting() -> None:
    commands = [cmd(f"user{i}@example.com") for i in range(16)]
    bad = commands[11]
    standin = SendGridStandin(api_key=KEY, refused_unnamed=[bad.email or ""])
    sg, routed = connector(standin)

    outcomes = by_id(sg.apply(commands))

    assert outcomes[bad.command_id] == Outcome.rejected(
        bad.command_id, "SendGrid: HTTP 400: invalid email address in recipient_emails"
    )
    assert Counter(o.status for o in outcomes.values()) == {AckStatus.APPLIED: 15, AckStatus.REJECTED: 1}
    assert routed.calls <= 1 + 2 * 4


def test_429_waits_until_x_ratelimit_reset() -> None:
    # The stand-in's second in progress is a quarter gone: the window resets at NOW + 1 s.
    standin = SendGridStandin(
        api_key=KEY,
        rate_limit_per_second=1,
        monotonic=lambda: 100.25,
        wall_clock=lambda: NOW.timestamp() + 0.25,
    )
    sg, routed = connector(standin)
    sg.apply([cmd("first@example.com")])

    with pytest.raises(IncompleteBatch) as raised:
        sg.apply([cmd("second@example.com")])

    answer = routed.requests[-1]
    assert answer.url.path == "/v3/asm/suppressions/global"
    assert raised.value.outcomes == []
    assert raised.value.retry_after == pytest.approx(1.0)
    assert standin.answers[429] == 1
    assert "second@example.com" not in standin.suppressed


def test_rate_limit_wait_reads_the_epoch_reset_header() -> None:
    import httpx

    reset = int(NOW.timestamp()) + 30
    response = httpx.Response(
        429,
        headers={"X-RateLimit-Limit": "150", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
    )
    assert rate_limit_wait(response, NOW) == pytest.approx(30.0)
    assert rate_limit_wait(httpx.Response(429, headers={"X-RateLimit-Reset": "soon"}), NOW) is None
    assert rate_limit_wait(httpx.Response(429, headers={"Retry-After": "4"}), NOW) == 4.0


@pytest.mark.parametrize("seed", [1, 2])
def test_5xx_is_transient_and_rejects_nothing(seed: int) -> None:
    import random

    standin = SendGridStandin(api_key=KEY, failure_rate=1.0, rng=random.Random(seed))
    sg, _ = connector(standin)

    with pytest.raises(IncompleteBatch) as raised:
        sg.apply([cmd("a@example.com"), cmd("b@example.com")])

    assert raised.value.outcomes == []
    assert isinstance(raised.value.cause, RetriableError)
    assert not isinstance(raised.value.cause, CredentialsRefused)
    assert set(standin.answers) <= {500, 503} and standin.answers
    assert standin.suppressed == {}


def test_a_wrong_key_is_credentials_refused_until_the_key_works() -> None:
    standin = SendGridStandin(api_key="the-real-key")
    sg, _ = connector(standin, key="a-stale-key")
    command = cmd("wait@example.com")

    with pytest.raises(IncompleteBatch) as raised:
        sg.apply([command])
    assert isinstance(raised.value.cause, CredentialsRefused)
    assert raised.value.retry_after == 7.0 and raised.value.outcomes == []
    assert standin.answers[401] == 1

    standin.set_api_key("a-stale-key")  # the operator rotates the key the connector holds
    assert sg.apply([command]) == [Outcome.applied(command.command_id)]


def test_more_than_1000_addresses_go_in_requests_of_at_most_1000() -> None:
    standin = SendGridStandin(api_key=KEY)
    sg, routed = connector(standin)
    commands = [cmd(f"u{i}@example.com") for i in range(1500)]

    outcomes = sg.apply(commands)

    assert len(outcomes) == 1500 and {o.status for o in outcomes} == {AckStatus.APPLIED}
    assert [len(json.loads(r.content)["recipient_emails"]) for r in routed.requests] == [1000, 500]


def test_build_reads_options_and_the_api_key() -> None:
    settings = Settings(connector_credentials_check_seconds=12.0)
    destination = Destination(
        id="sendgrid_eu",
        scopes=frozenset(),
        identifiers=frozenset(),
        requires_one_of=frozenset(),
        kind="sendgrid",
        options={"base_url": "https://api.eu.sendgrid.com", "group_id": 7},
        credentials={"api_key": SecretStr("k")},
    )
    built = sendgrid.build(destination, settings)
    assert (built.destination, built.base_url, built.group_id) == (
        "sendgrid_eu",
        "https://api.eu.sendgrid.com",
        7,
    )
    assert built.credentials_check_seconds == 12.0
    built.close()

    with pytest.raises(ConfigurationError, match=r"settings\.group_id"):
        sendgrid.build(
            Destination(
                id="sg",
                scopes=frozenset(),
                identifiers=frozenset(),
                requires_one_of=frozenset(),
                kind="sendgrid",
                options={"group_id": "abc"},
                credentials={"api_key": SecretStr("k")},
            ),
            settings,
        )
    with pytest.raises(ConfigurationError, match="needs credential 'api_key'"):
        sendgrid.build(
            Destination(
                id="sg",
                scopes=frozenset(),
                identifiers=frozenset(),
                requires_one_of=frozenset(),
                kind="sendgrid",
            ),
            settings,
        )


def test_a_refusal_naming_a_longer_address_does_not_reject_its_suffix() -> None:
    short, long = cmd("a@example.com"), cmd("aa@example.com")
    standin = SendGridStandin(api_key=KEY, rejected=["aa@example.com"])
    sg, _ = connector(standin)

    outcomes = by_id(sg.apply([short, long]))

    assert outcomes[short.command_id].status is AckStatus.APPLIED
    assert outcomes[long.command_id].status is AckStatus.REJECTED


def test_lists_every_global_suppression_page_by_page_for_reconciliation() -> None:
    standin = SendGridStandin(api_key=KEY)
    sg, routed = connector(standin)
    sg.apply([cmd(f"list{i}@example.com") for i in range(7)])
    routed.requests.clear()

    listed = list(sg.list_suppressed(page_size=3))

    assert listed == [f"list{i}@example.com" for i in range(7)]
    assert [
        (r.method, r.url.path, r.url.params["limit"], r.url.params["offset"]) for r in routed.requests
    ] == [
        ("GET", "/v3/suppression/unsubscribes", "3", "0"),
        ("GET", "/v3/suppression/unsubscribes", "3", "3"),
        ("GET", "/v3/suppression/unsubscribes", "3", "6"),
    ]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in routed.requests)


def test_a_list_answer_that_is_not_the_documented_array_is_not_an_empty_list() -> None:
    routed = Routed(lambda request: Response(200, {"result": []}))
    sg = SendGridConnector(
        "sendgrid_eu", SecretStr(KEY), routed.client(), base_url="https://api.sendgrid.test"
    )
    with pytest.raises(RetriableError, match="documented"):
        list(sg.list_suppressed())
