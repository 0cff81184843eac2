"""Opting back in at every connector kind (issue #12): each kind's un-suppress call against
its stand-in (or botocore's Stubber for SES), after an opt-out of the same person."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from botocore.stub import Stubber
from pydantic import SecretStr

from services.common.clock import ManualClock
from services.common.contract import AckStatus
from services.common.settings import PartnerEndpoint
from services.connectors import mail_house as mh
from services.connectors import webhook_partners as wp
from services.connectors.email_provider import EmailProviderConnector
from services.connectors.http import NOT_LISTED
from services.connectors.kit import Command, Outcome
from services.connectors.mailgun import MailgunConnector
from services.connectors.sendgrid import SendGridConnector
from services.connectors.sftp_mail_house import build_file
from services.connectors.third_party_sharing import ThirdPartySharingConnector
from services.domain.identity import sha256_hex
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.mail_house_sftp import receipt_for
from services.standins.mailgun_api import MailgunStandin
from services.standins.partners_api import PartnersStandin
from services.standins.sendgrid_api import SendGridStandin
from tests.support.commands import make_command
from tests.support.standin_transport import Routed
from tests.unit import test_ses_connector as ses_tests
from tests.unit import test_webhook_partners as wp_tests

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
EMAIL = "ada@example.com"


def out(destination: str, **fields: Any) -> Command:
    return make_command(NOW, destination, **fields)


def back_in(destination: str, **fields: Any) -> Command:
    return make_command(NOW, destination, action="OPT_IN", **fields)


def statuses(outcomes: list[Outcome]) -> list[tuple[AckStatus, str | None]]:
    return [(o.status, o.detail) for o in outcomes]


def test_email_provider_deletes_the_address_and_a_second_opt_in_finds_nothing() -> None:
    standin = EmailProviderStandin(token="tok")
    routed = Routed(standin.handle)
    connector = EmailProviderConnector("http://esp", SecretStr("tok"), routed.client(), ManualClock(NOW))
    connector.apply([out("email_provider", email=EMAIL)])
    assert EMAIL in standin.suppressed
    assert statuses(connector.apply([back_in("email_provider", email=EMAIL)])) == [(AckStatus.APPLIED, None)]
    assert EMAIL not in standin.suppressed
    request = routed.requests[-1]
    assert request.method == "DELETE" and request.url.path == f"/v3/asm/suppressions/global/{EMAIL}"
    assert request.headers["authorization"] == "Bearer tok"
    again = connector.apply([back_in("email_provider", email=EMAIL)])
    assert statuses(again) == [(AckStatus.APPLIED, NOT_LISTED)]


def test_sendgrid_deletes_the_global_suppression_and_the_group_one() -> None:
    standin = SendGridStandin(api_key="sg")
    routed = Routed(standin.handle)
    connector = SendGridConnector(
        "sendgrid_eu", SecretStr("sg"), routed.client(), "https://api.sendgrid.test", 77, ManualClock(NOW)
    )
    connector.apply([out("sendgrid_eu", email=EMAIL)])
    assert EMAIL in standin.suppressed and EMAIL in standin.groups[77]
    assert statuses(connector.apply([back_in("sendgrid_eu", email=EMAIL)])) == [(AckStatus.APPLIED, None)]
    assert EMAIL not in standin.suppressed and EMAIL not in standin.groups[77]
    deletes = [(r.method, r.url.path) for r in routed.requests if r.method == "DELETE"]
    assert deletes == [
        ("DELETE", f"/v3/asm/suppressions/global/{EMAIL}"),
        ("DELETE", f"/v3/asm/groups/77/suppressions/{EMAIL}"),
    ]
    assert connector.read_back(EMAIL) is False


def test_mailgun_deletes_the_unsubscribe_and_a_missing_one_is_not_an_error() -> None:
    standin = MailgunStandin(api_key="mg")
    routed = Routed(standin.handle)
    connector = MailgunConnector(
        "mailgun_us",
        SecretStr("mg"),
        routed.client(),
        "mg.example.com",
        "https://api.mailgun.test",
        ManualClock(NOW),
    )
    connector.apply([out("mailgun_us", email=EMAIL)])
    assert connector.read_back(EMAIL)
    assert statuses(connector.apply([back_in("mailgun_us", email=EMAIL)])) == [(AckStatus.APPLIED, None)]
    assert routed.requests[-1].method == "DELETE"
    assert routed.requests[-1].url.path == f"/v3/mg.example.com/unsubscribes/{EMAIL}"
    assert not connector.read_back(EMAIL)
    assert statuses(connector.apply([back_in("mailgun_us", email=EMAIL)])) == [
        (AckStatus.APPLIED, NOT_LISTED)
    ]


def test_ses_opt_in_clears_unsubscribe_all_and_leaves_an_opted_in_contact_alone() -> None:
    conn = ses_tests.connector(topic_name="news")
    command = back_in("ses_main", email=EMAIL)
    with Stubber(conn.client) as stub:
        stub.add_response(
            "get_contact",
            {
                "ContactListName": ses_tests.LIST,
                "EmailAddress": EMAIL,
                "UnsubscribeAll": True,
                "TopicPreferences": [
                    {"TopicName": "news", "SubscriptionStatus": "OPT_OUT"},
                    {"TopicName": "offers", "SubscriptionStatus": "OPT_IN"},
                ],
            },
            {"ContactListName": ses_tests.LIST, "EmailAddress": EMAIL},
        )
        stub.add_response(
            "update_contact",
            {},
            {
                "ContactListName": ses_tests.LIST,
                "EmailAddress": EMAIL,
                "TopicPreferences": [
                    {"TopicName": "offers", "SubscriptionStatus": "OPT_IN"},
                    {"TopicName": "news", "SubscriptionStatus": "OPT_IN"},
                ],
                "UnsubscribeAll": False,
            },
        )
        stub.add_client_error("get_contact", "NotFoundException", "no such contact", 404)
        assert statuses(conn.apply([command])) == [(AckStatus.APPLIED, None)]
        [absent] = conn.apply([back_in("ses_main", email="new@example.com")])
        stub.assert_no_pending_responses()
    assert absent.status is AckStatus.APPLIED and absent.detail is not None
    conn.close()


ADDRESS = {
    "name": "Ada Lovelace",
    "lines": ["12 St James's Sq"],
    "city": "London",
    "region": None,
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


def test_mail_house_files_say_opt_in_on_its_own_row_in_order(tmp_path: Path) -> None:
    connector = mh.MailHouseConnector(tmp_path, ManualClock(NOW))
    first, second = out("mail_house", postal_address=ADDRESS), back_in("mail_house", postal_address=ADDRESS)
    connector.apply([first])
    connector.apply([second])
    lines = (tmp_path / mh.file_name(NOW.date())).read_text().splitlines()
    assert lines[0].endswith(",action")
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["OPT_OUT", "OPT_IN"]


def test_sftp_mail_house_file_carries_the_action_and_the_stand_in_accepts_it() -> None:
    batch = build_file(
        [out("mh", postal_address=ADDRESS), back_in("mh", postal_address=ADDRESS)], date(2026, 12, 1)
    )
    receipt = receipt_for("suppressions-00000001.csv", batch.content, NOW)
    assert receipt["rows"] == 2 and receipt["rejected"] == []
    bad = batch.content.replace(b",OPT_IN", b",MAYBE")
    assert receipt_for("x.csv", bad, NOW)["rejected"] == [{"row": 2, "reason": "unknown action"}]


def test_partners_are_told_of_the_opt_in_and_drop_the_opt_out() -> None:
    standin = PartnersStandin({"p1": "t1"})
    partner = PartnerEndpoint(name="p1", url="http://partners/partners/p1", token=SecretStr("t1"))
    connector = ThirdPartySharingConnector([partner], Routed(standin.handle).client(), ManualClock(NOW))
    hashed = {"email_sha256": sha256_hex(EMAIL), "customer_id": "C-1"}
    connector.apply([out("third_party_sharing", **hashed)])
    assert len(standin.partners["p1"].opt_outs) == 1
    assert statuses(connector.apply([back_in("third_party_sharing", **hashed)])) == [
        (AckStatus.APPLIED, None)
    ]
    assert standin.partners["p1"].opt_outs == {} and len(standin.partners["p1"].opt_ins) == 1
    assert all("@" not in body and "C-1" not in body for body in standin.partners["p1"].raw_bodies)


def test_webhook_partners_get_a_signed_suppression_deleted_event() -> None:
    standin = wp_tests.standin()
    connector, routed = wp_tests.connector(standin)
    hashed = {"email_sha256": sha256_hex(EMAIL), "customer_id": "C-1"}
    connector.apply([out("partners", **hashed)])
    assert statuses(connector.apply([back_in("partners", **hashed)])) == [(AckStatus.APPLIED, None)]
    for partner in standin.partners.values():
        assert partner.receiver.held == {} and len(partner.receiver.opted_in) == 1
    bodies = [r.content for r in routed.requests]
    assert any(b'"type":"suppression.deleted"' in b and b'"opt_ins"' in b for b in bodies)
    assert wp.DELETED_EVENT_TYPE == "suppression.deleted"
