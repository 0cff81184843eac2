"""The ``sms_optout_list`` kind: a real botocore ``pinpoint-sms-voice-v2`` client, signing
with SigV4, answered in-process by the AWS End User Messaging SMS stand-in (botocore's
``before-send`` event, no sockets): the documented calls, SigV4 checks, error shapes and their
meaning for the kit (issue #12)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError
from pydantic import SecretStr

from services.common.contract import AckStatus, Action, Destination, Identifier, Scope
from services.common.errors import ConfigurationError, RetriableError
from services.common.settings import Settings
from services.connectors import sms_optout_list as sms
from services.connectors.kit import Command, CredentialsRefused, IncompleteBatch, Outcome
from services.connectors.registry import KINDS
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import Request
from tests.support.commands import make_command
from tests.support.standin_transport import RoutedBotocore

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
KEY_ID, SECRET = "AKIASMSEXAMPLE", "sms-s3cret"
PHONE_A, PHONE_B, PHONE_C = "+14155550100", "+14155550101", "+16135550102"


def destination(credentials: dict[str, str] | None = None, **options: Any) -> Destination:
    creds = {"access_key_id": KEY_ID, "secret_access_key": SECRET} if credentials is None else credentials
    return Destination(
        id="sms_us",
        scopes=frozenset({Scope.SMS_MARKETING}),
        identifiers=frozenset({Identifier.PHONE}),
        requires_one_of=frozenset({Identifier.PHONE}),
        kind=sms.KIND,
        options={
            "region": "us-east-1",
            "opt_out_list_name": "optout",
            "endpoint_url": "https://sms-voice.test",
            **options,
        },
        credentials={k: SecretStr(v) for k, v in creds.items()},
    )


def connect(
    standin: SmsOptOutStandin, credentials: dict[str, str] | None = None, **options: Any
) -> tuple[sms.SmsOptOutListConnector, RoutedBotocore]:
    built = sms.build(destination(credentials, **options), Settings())
    assert isinstance(built, sms.SmsOptOutListConnector)
    routed = RoutedBotocore(standin.handle)
    routed.attach(built.client)
    return built, routed


@pytest.fixture
def standin() -> SmsOptOutStandin:
    return SmsOptOutStandin({KEY_ID: SECRET})


@pytest.fixture
def conn(standin: SmsOptOutStandin) -> Iterator[tuple[sms.SmsOptOutListConnector, RoutedBotocore]]:
    built = connect(standin)
    yield built
    built[0].close()


def cmd(phone: str | None, action: str = "OPT_OUT") -> Command:
    return make_command(NOW, "sms_us", phone=phone, scopes=["SMS_MARKETING"], action=Action(action))


def statuses(outcomes: list[Outcome]) -> dict[str, AckStatus]:
    return {o.command_id: o.status for o in outcomes}


# --- success paths ----------------------------------------------------------------------------
def test_opt_out_puts_the_number_on_the_list_and_reads_back(conn, standin) -> None:
    connector, routed = conn
    a, b = cmd(PHONE_A), cmd(PHONE_B)
    assert statuses(connector.apply([a, b])) == {
        a.command_id: AckStatus.APPLIED,
        b.command_id: AckStatus.APPLIED,
    }
    assert routed.targets == ["PutOptedOutNumber", "PutOptedOutNumber"]
    assert standin.opted_out() == {PHONE_A, PHONE_B}
    assert connector.is_opted_out(PHONE_A) and not connector.is_opted_out(PHONE_C)
    assert sorted(connector.opted_out_numbers(page_size=1)) == [PHONE_A, PHONE_B]  # NextToken paging
    assert standin.stats()["calls"]["DescribeOptedOutNumbers"] == 1 + 1 + 2


def test_applying_again_changes_nothing(conn, standin) -> None:
    connector, _ = conn
    connector.apply([cmd(PHONE_A)])
    again = cmd(PHONE_A)
    # PutOptedOutNumber answers the same for a number already there: APPLIED, never ALREADY_SUPPRESSED.
    assert statuses(connector.apply([again])) == {again.command_id: AckStatus.APPLIED}
    assert standin.opted_out() == {PHONE_A}


def test_opt_in_deletes_the_number_and_a_number_not_listed_is_already_opted_in(conn, standin) -> None:
    connector, routed = conn
    connector.apply([cmd(PHONE_A)])
    back, absent = cmd(PHONE_A, "OPT_IN"), cmd(PHONE_B, "OPT_IN")
    outcomes = {o.command_id: o for o in connector.apply([back, absent])}
    assert outcomes[back.command_id].status == AckStatus.APPLIED
    assert outcomes[absent.command_id].status == AckStatus.ALREADY_SUPPRESSED
    assert outcomes[absent.command_id].detail == "not on the opt-out list"
    assert routed.targets[-2:] == ["DeleteOptedOutNumber", "DeleteOptedOutNumber"]
    assert standin.opted_out() == set()


@pytest.mark.parametrize(
    ("actions", "listed"), [(["OPT_OUT", "OPT_IN"], False), (["OPT_IN", "OPT_OUT"], True)]
)
def test_one_numbers_commands_in_a_batch_apply_in_their_order(conn, standin, actions, listed) -> None:
    connector, _ = conn
    connector.apply([cmd(PHONE_A, action) for action in actions])
    assert (PHONE_A in standin.opted_out()) is listed


def test_commands_without_a_usable_number_are_rejected_without_a_call(conn) -> None:
    # (An unknown action cannot reach a connector: the Avro enum reads it as OPT_OUT.)
    connector, routed = conn
    none, local = cmd(None), cmd("4155550100")
    outcomes = {o.command_id: o for o in connector.apply([none, local])}
    assert {o.status for o in outcomes.values()} == {AckStatus.REJECTED}
    assert outcomes[none.command_id].detail == "command carries no phone number"
    assert outcomes[local.command_id].detail == "phone number is not in E.164 format"
    assert routed.targets == []


# --- refusals and failures ----------------------------------------------------------------------
def test_a_number_aws_refuses_rejects_only_its_command_without_digits(standin) -> None:
    standin.rejected = {PHONE_B}
    connector, _ = connect(standin)
    good, bad = cmd(PHONE_A), cmd(PHONE_B)
    outcomes = {o.command_id: o for o in connector.apply([good, bad])}
    assert outcomes[good.command_id].status == AckStatus.APPLIED
    assert outcomes[bad.command_id].status == AckStatus.REJECTED
    detail = outcomes[bad.command_id].detail or ""
    assert "ValidationException (FIELD_VALIDATION_FAILED)" in detail
    assert not re.search(r"\d{5}", detail)


def test_throttling_retries_after_the_configured_wait_keeping_progress() -> None:
    standin = SmsOptOutStandin({KEY_ID: SECRET}, rate_limit_per_second=1, monotonic=lambda: 0.0)
    connector, _ = connect(standin, concurrency=1, throttle_retry_seconds=2.5)
    first, second = cmd(PHONE_A), cmd(PHONE_B)
    with pytest.raises(IncompleteBatch) as info:
        connector.apply([first, second])
    assert statuses(info.value.outcomes) == {first.command_id: AckStatus.APPLIED}
    assert info.value.retry_after == 2.5 and "throttled" in str(info.value)
    assert not isinstance(info.value.cause, CredentialsRefused)


def test_server_errors_are_transient_and_reject_nothing() -> None:
    connector, _ = connect(SmsOptOutStandin({KEY_ID: SECRET}, failure_rate=1.0))
    with pytest.raises(RetriableError, match="InternalServerException") as info:
        connector.apply([cmd(PHONE_A)])
    assert not isinstance(info.value, CredentialsRefused | IncompleteBatch)


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        ({"access_key_id": KEY_ID, "secret_access_key": "wrong"}, "InvalidSignatureException"),
        ({"access_key_id": "AKIAUNKNOWN", "secret_access_key": SECRET}, "InvalidClientTokenId"),
    ],
)
def test_refused_credentials_pause_until_the_key_works(standin, credentials, code) -> None:
    connector, _ = connect(standin, credentials, credentials_retry_seconds=7)
    with pytest.raises(CredentialsRefused, match=code) as info:
        connector.apply([cmd(PHONE_A)])
    assert info.value.retry_after == 7
    standin.set_keys({credentials["access_key_id"]: credentials["secret_access_key"]})  # key rotated at AWS
    assert [o.status for o in connector.apply([cmd(PHONE_A)])] == [AckStatus.APPLIED]


def test_a_stale_signature_is_refused_as_expired() -> None:
    late = SmsOptOutStandin({KEY_ID: SECRET}, wall_clock=lambda: datetime.now(UTC).timestamp() + 600)
    connector, _ = connect(late)
    with pytest.raises(CredentialsRefused, match="RequestExpired"):
        connector.apply([cmd(PHONE_A)])


def test_a_missing_opt_out_list_is_our_misconfiguration(standin) -> None:
    connector, _ = connect(standin, opt_out_list_name="nosuchlist")
    with pytest.raises(sms.SmsMisconfigured, match="'nosuchlist' not found in us-east-1"):
        connector.apply([cmd(PHONE_A), cmd(PHONE_B, "OPT_IN")])
    with pytest.raises(sms.SmsMisconfigured):
        list(connector.opted_out_numbers())


def _client_error(code: str, status: int = 400, **members: object) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"about +14155550100: {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
            **members,
        },
        "PutOptedOutNumber",
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_client_error("AccessDeniedException", Reason="ACCOUNT_DISABLED"), CredentialsRefused),
        (_client_error("ConflictException", Reason="RESOURCE_MODIFICATION_NOT_ALLOWED"), RetriableError),
        (_client_error("InternalServerException", 500), RetriableError),
        (
            _client_error("ValidationException", Reason="INVALID_ARN", Fields=[{"Name": "OptOutListName"}]),
            sms.SmsMisconfigured,
        ),
        (_client_error("ValidationException", Reason="PHONE_NUMBER_CANNOT_BE_OPTED_IN"), sms.Refusal),
        (ConnectTimeoutError(endpoint_url="https://sms-voice.test"), RetriableError),
    ],
)
def test_error_mapping(error: ClientError | BotoCoreError, kind: type) -> None:
    options = sms.SmsOptOutListOptions(region="us-east-1", opt_out_list_name="optout")
    found = sms.classify(error, "PutOptedOutNumber", options)
    assert type(found) is kind
    text = found.reason if isinstance(found, sms.Refusal) else str(found)
    assert "4155550100" not in text


# --- the kind -----------------------------------------------------------------------------------
def test_the_kind_is_registered_and_checks_its_options() -> None:
    assert KINDS[sms.KIND]() is sms.build
    with pytest.raises(ConfigurationError, match=r"settings\.opt_out_list_name"):
        sms.build(destination(opt_out_list_name="bad name!"), Settings())
    with pytest.raises(ConfigurationError, match=r"settings\.colour"):
        sms.build(destination(colour="red"), Settings())


def test_a_loopback_endpoint_without_credentials_uses_the_standin_key(standin) -> None:
    settings = Settings(standin_sms_access_key_id=KEY_ID, standin_sms_secret_access_key=SECRET)
    built = sms.build(destination(credentials={}, endpoint_url="http://127.0.0.1:18096"), settings)
    assert isinstance(built, sms.SmsOptOutListConnector)
    RoutedBotocore(standin.handle).attach(built.client)
    assert [o.status for o in built.apply([cmd(PHONE_A)])] == [AckStatus.APPLIED]
    built.close()
    with pytest.raises(ConfigurationError, match="needs credential 'access_key_id'"):
        sms.build(destination(credentials={}), settings)  # AWS (not loopback): the file must name them
    with pytest.raises(ConfigurationError, match="local stand-in; OPTOUT_ENV=production"):
        sms.build(destination(endpoint_url="http://localhost:18096"), Settings(env="production"))


# --- the stand-in's wire shapes -------------------------------------------------------------------
def test_standin_refuses_unsigned_requests_in_the_aws_json_error_shape(standin) -> None:
    answer = standin.handle(
        Request(
            "POST",
            "/",
            {
                "x-amz-target": "PinpointSMSVoiceV2.PutOptedOutNumber",
                "content-type": "application/x-amz-json-1.0",
            },
            b'{"OptOutListName": "optout", "OptedOutNumber": "+14155550100"}',
        )
    )
    assert answer.status == 400
    assert answer.headers["x-amzn-ErrorType"] == "IncompleteSignature"
    assert answer.headers["Content-Type"] == "application/x-amz-json-1.0"
    assert answer.body["__type"] == "IncompleteSignature" and answer.body["Message"]
    assert standin.opted_out() == set()


def test_standin_lists_filters_and_creates_lists_like_the_reference(standin) -> None:
    connector, _ = connect(standin)
    client: Any = connector.client  # botocore ships no types
    client.create_opt_out_list(OptOutListName="marketing_us")
    with pytest.raises(ClientError) as exists:
        client.create_opt_out_list(OptOutListName="marketing_us")
    assert exists.value.response["Reason"] == "RESOURCE_ALREADY_EXISTS"
    names = [x["OptOutListName"] for x in client.describe_opt_out_lists()["OptOutLists"]]
    assert names == ["Default", "marketing_us", "optout"]
    connector.apply([cmd(PHONE_A)])
    mine = client.describe_opted_out_numbers(
        OptOutListName="optout", Filters=[{"Name": "end-user-opted-out", "Values": ["false"]}]
    )
    assert [n["OptedOutNumber"] for n in mine["OptedOutNumbers"]] == [PHONE_A]
    assert mine["OptedOutNumbers"][0]["EndUserOptedOut"] is False
    with pytest.raises(ClientError) as bad:
        client.describe_opted_out_numbers(OptOutListName="optout", OptedOutNumbers=["not-a-number"])
    assert bad.value.response["Fields"][0]["Name"] == "OptedOutNumbers"
    connector.close()


def test_the_pacer_spaces_calls_to_the_configured_rate() -> None:
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        clock[0] += seconds

    pacer = sms.Pacer(10, monotonic=lambda: clock[0], sleep=sleep)
    for _ in range(4):
        pacer.wait()
    assert slept == [0.1, 0.1, 0.1]  # the first goes at once, then one every 1/10 s
    clock[0] += 5.0  # idle: no burst is saved up beyond the next slot
    pacer.wait()
    assert slept == [0.1, 0.1, 0.1]
    unpaced = sms.Pacer(0, monotonic=lambda: clock[0], sleep=sleep)
    unpaced.wait()
    unpaced.wait()
    assert slept == [0.1, 0.1, 0.1]


def test_requests_per_second_paces_the_calls(standin) -> None:
    connector, _routed = connect(standin, requests_per_second=1000, concurrency=2)
    try:
        assert connector._pacer.interval == pytest.approx(0.001)
        outcomes = connector.apply([cmd(PHONE_A), cmd(PHONE_B), cmd(PHONE_C)])
        assert set(statuses(outcomes).values()) == {AckStatus.APPLIED}
        assert standin.opted_out() == {PHONE_A, PHONE_B, PHONE_C}
    finally:
        connector.close()
    with pytest.raises(ConfigurationError):
        sms.build(destination(requests_per_second=-1), Settings())


def test_a_large_batch_queues_at_most_concurrency_tasks(standin, monkeypatch) -> None:
    connector, _routed = connect(standin, concurrency=3)
    submitted = 0
    submit = connector._pool.submit

    def counting_submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        nonlocal submitted
        submitted += 1
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(connector._pool, "submit", counting_submit)
    phones = [f"+1415555{n:04d}" for n in range(60)]
    try:
        outcomes = connector.apply([cmd(p) for p in phones])
    finally:
        connector.close()
    assert len(outcomes) == 60 and set(statuses(outcomes).values()) == {AckStatus.APPLIED}
    assert standin.opted_out() == set(phones)
    assert submitted == 2  # the calling thread is the third worker; not one Future per number
