"""The ``ses`` kind: SES v2 answers (driven through a real botocore client with botocore's
Stubber, no network) mapped to outcomes and errors, and its options/credentials."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
from botocore.stub import Stubber
from pydantic import SecretStr

from services.common.contract import AckStatus, Destination, Identifier, Scope
from services.common.errors import ConfigurationError, RetriableError
from services.common.settings import Settings
from services.connectors import ses
from services.connectors.kit import CredentialsRefused, IncompleteBatch
from tests.support.commands import make_command

NOW = datetime(2026, 12, 1, tzinfo=UTC)
LIST = "optout"


def destination(**options: Any) -> Destination:
    return Destination(
        id="ses_main",
        scopes=frozenset({Scope.EMAIL_MARKETING}),
        identifiers=frozenset({Identifier.EMAIL}),
        requires_one_of=frozenset({Identifier.EMAIL}),
        kind=ses.KIND,
        options={"region": "eu-west-1", "contact_list_name": LIST, "concurrency": 1, **options},
        credentials={"access_key_id": SecretStr("AKIAEXAMPLE"), "secret_access_key": SecretStr("s3cret")},
    )


def connector(**options: Any) -> ses.SesConnector:
    built = ses.build(destination(**options), Settings())
    assert isinstance(built, ses.SesConnector)
    return built


@pytest.fixture
def conn() -> Iterator[ses.SesConnector]:
    built = connector()
    yield built
    built.close()


def cmd(email: str | None) -> Any:
    return make_command(NOW, destination="ses_main", email=email)


def create_params(email: str, **body: Any) -> dict[str, Any]:
    return {"ContactListName": LIST, "EmailAddress": email, **(body or {"UnsubscribeAll": True})}


# --- success paths ----------------------------------------------------------------------------
def test_new_address_is_created_unsubscribed_from_all(conn: ses.SesConnector) -> None:
    one, none = cmd("a@example.com"), cmd(None)
    with Stubber(conn.client) as stub:
        stub.add_response("create_contact", {}, create_params("a@example.com"))
        outcomes = conn.apply([one, none])
        stub.assert_no_pending_responses()
    assert {(o.command_id, o.status) for o in outcomes} == {
        (one.command_id, AckStatus.APPLIED),
        (none.command_id, AckStatus.REJECTED),
    }


def test_a_topic_option_opts_out_of_that_topic_only() -> None:
    conn = connector(topic_name="news")
    with Stubber(conn.client) as stub:
        stub.add_response(
            "create_contact",
            {},
            create_params(
                "a@example.com", TopicPreferences=[{"TopicName": "news", "SubscriptionStatus": "OPT_OUT"}]
            ),
        )
        [outcome] = conn.apply([cmd("a@example.com")])
    assert outcome.status is AckStatus.APPLIED


def test_existing_contact_is_updated_keeping_its_other_preferences_and_attributes() -> None:
    conn = connector(topic_name="news")
    with Stubber(conn.client) as stub:
        stub.add_client_error("create_contact", "AlreadyExistsException", "exists", 400)
        stub.add_response(
            "get_contact",
            {
                "ContactListName": LIST,
                "EmailAddress": "a@example.com",
                "UnsubscribeAll": False,
                "TopicPreferences": [
                    {"TopicName": "news", "SubscriptionStatus": "OPT_IN"},
                    {"TopicName": "offers", "SubscriptionStatus": "OPT_IN"},
                ],
                "AttributesData": '{"plan": "pro"}',
            },
            {"ContactListName": LIST, "EmailAddress": "a@example.com"},
        )
        stub.add_response(
            "update_contact",
            {},
            {
                "ContactListName": LIST,
                "EmailAddress": "a@example.com",
                "TopicPreferences": [
                    {"TopicName": "offers", "SubscriptionStatus": "OPT_IN"},
                    {"TopicName": "news", "SubscriptionStatus": "OPT_OUT"},
                ],
                "UnsubscribeAll": False,
                "AttributesData": '{"plan": "pro"}',
            },
        )
        [outcome] = conn.apply([cmd("a@example.com")])
        stub.assert_no_pending_responses()
    assert outcome.status is AckStatus.APPLIED


def test_existing_contact_already_opted_out_is_not_written_again(conn: ses.SesConnector) -> None:
    with Stubber(conn.client) as stub:
        stub.add_client_error("create_contact", "AlreadyExistsException", "exists", 400)
        stub.add_response("get_contact", {"EmailAddress": "a@example.com", "UnsubscribeAll": True})
        [outcome] = conn.apply([cmd("a@example.com")])
        stub.assert_no_pending_responses()  # no UpdateContact
    assert outcome.status is AckStatus.ALREADY_SUPPRESSED


# --- errors -----------------------------------------------------------------------------------------
def test_throttling_is_retried_after_retry_after_or_the_configured_wait(conn: ses.SesConnector) -> None:
    with Stubber(conn.client) as stub:
        stub.add_client_error(
            "create_contact",
            "TooManyRequestsException",
            "Too many requests",
            429,
            response_meta={"HTTPHeaders": {"retry-after": "7"}},
        )
        with pytest.raises(RetriableError) as with_header:
            conn.apply([cmd("a@example.com")])
        stub.add_client_error("create_contact", "ThrottlingException", "Rate exceeded", 400)
        with pytest.raises(RetriableError) as without:
            conn.apply([cmd("b@example.com")])
    assert with_header.value.retry_after == 7.0
    assert without.value.retry_after == conn.options.throttle_retry_seconds
    assert not isinstance(without.value, CredentialsRefused)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDeniedException", 403),
        ("UnrecognizedClientException", 403),
        ("InvalidSignatureException", 403),
        ("SignatureDoesNotMatch", 403),
        ("403", 403),  # moto's XML error body parsed by the JSON protocol
        ("ExpiredTokenException", 400),
    ],
)
def test_refused_credentials(conn: ses.SesConnector, code: str, status: int) -> None:
    with Stubber(conn.client) as stub:
        stub.add_client_error("create_contact", code, "no", status)
        with pytest.raises(CredentialsRefused) as refused:
            conn.apply([cmd("a@example.com")])
    assert refused.value.retry_after == conn.options.credentials_retry_seconds
    assert not isinstance(refused.value, ses.SesMisconfigured)


def test_missing_contact_list_pauses_as_misconfiguration(conn: ses.SesConnector) -> None:
    with Stubber(conn.client) as stub:
        stub.add_client_error(
            "create_contact", "NotFoundException", "List with name: optout doesn't exist.", 404
        )
        with pytest.raises(ses.SesMisconfigured, match="contact list 'optout' not found in eu-west-1"):
            conn.apply([cmd("a@example.com")])


def test_invalid_address_is_rejected_alone_without_the_address(conn: ses.SesConnector) -> None:
    bad, good = cmd("bad@@example.com"), cmd("b@example.com")
    with Stubber(conn.client) as stub:
        stub.add_client_error(
            "create_contact", "BadRequestException", "Invalid email address: bad@@example.com", 400
        )
        stub.add_response("create_contact", {}, create_params("b@example.com"))
        outcomes = {o.command_id: o for o in conn.apply([bad, good])}
    assert outcomes[good.command_id].status is AckStatus.APPLIED
    rejected = outcomes[bad.command_id]
    assert rejected.status is AckStatus.REJECTED and rejected.detail is not None
    assert "BadRequestException" in rejected.detail and "Invalid email address" in rejected.detail
    assert "example.com" not in rejected.detail


def test_bad_request_not_about_the_address_is_our_misconfiguration() -> None:
    conn = connector(topic_name="nosuch")
    with Stubber(conn.client) as stub:
        stub.add_client_error("create_contact", "BadRequestException", "Topic nosuch does not exist", 400)
        with pytest.raises(ses.SesMisconfigured, match="Topic nosuch"):
            conn.apply([cmd("a@example.com")])


def test_transient_failure_mid_batch_keeps_the_progress(conn: ses.SesConnector) -> None:
    first, second, third = cmd("a@example.com"), cmd("b@example.com"), cmd("c@example.com")
    with Stubber(conn.client) as stub:
        stub.add_response("create_contact", {}, create_params("a@example.com"))
        stub.add_client_error("create_contact", "InternalFailure", "oops", 500)
        stub.add_response("create_contact", {}, create_params("c@example.com"))
        with pytest.raises(IncompleteBatch) as partial:
            conn.apply([first, second, third])
    assert {o.command_id for o in partial.value.outcomes} == {first.command_id, third.command_id}
    assert not isinstance(partial.value, CredentialsRefused)


@pytest.mark.parametrize(
    "error",
    [EndpointConnectionError(endpoint_url="http://x"), ConnectTimeoutError(endpoint_url="http://x")],
)
def test_connection_errors_are_transient(error: Any) -> None:
    found = ses.classify(error, "CreateContact", connector().options)
    assert type(found) is RetriableError


def test_vanished_contact_during_update_is_transient(conn: ses.SesConnector) -> None:
    with Stubber(conn.client) as stub:
        stub.add_client_error("create_contact", "AlreadyExistsException", "exists", 400)
        stub.add_client_error("get_contact", "NotFoundException", "gone", 404)
        with pytest.raises(RetriableError) as raised:
            conn.apply([cmd("a@example.com")])
    assert not isinstance(raised.value, CredentialsRefused)


# --- read-back --------------------------------------------------------------------------------------
def test_read_back_pages_and_keeps_only_opted_out_contacts(conn: ses.SesConnector) -> None:
    with Stubber(conn.client) as stub:
        stub.add_response(
            "list_contacts",
            {
                "Contacts": [
                    {"EmailAddress": "a@example.com", "UnsubscribeAll": True},
                    {"EmailAddress": "b@example.com", "UnsubscribeAll": False},
                ],
                "NextToken": "page2",
            },
            {"ContactListName": LIST, "PageSize": 2},
        )
        stub.add_response(
            "list_contacts",
            {"Contacts": [{"EmailAddress": "c@example.com", "UnsubscribeAll": True}]},
            {"ContactListName": LIST, "PageSize": 2, "NextToken": "page2"},
        )
        stub.add_client_error("get_contact", "NotFoundException", "nobody@example.com doesn't exist", 404)
        assert list(conn.opted_out_addresses(page_size=2)) == ["a@example.com", "c@example.com"]
        assert conn.contact("nobody@example.com") is None


# --- options and credentials -------------------------------------------------------------------------
def test_botocore_retries_are_off_and_the_given_credentials_are_used(conn: ses.SesConnector) -> None:
    meta: Any = conn.client
    assert meta.meta.config.retries["total_max_attempts"] == 1
    assert meta.meta.region_name == "eu-west-1"
    assert meta._request_signer._credentials.access_key == "AKIAEXAMPLE"


def test_missing_credential_and_bad_option_are_one_line_errors() -> None:
    no_secret = destination()
    object.__setattr__(no_secret, "credentials", {"access_key_id": SecretStr("AKIAEXAMPLE")})
    with pytest.raises(ConfigurationError, match="needs credential 'secret_access_key'"):
        ses.build(no_secret, Settings())
    with pytest.raises(ConfigurationError, match=r"settings\.regoin"):
        ses.build(destination(regoin="x"), Settings())
