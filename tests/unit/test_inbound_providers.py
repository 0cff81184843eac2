"""The inbound providers' verifiers and parsers (pure), and the SMS keyword parser."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from services.common.contract import Action
from services.common.errors import ConfigurationError
from services.inbound.base import Delivery, Rejected, inbound_event_id
from services.inbound.mailgun import Mailgun
from services.inbound.sendgrid import SendGrid, load_public_key
from services.inbound.ses import Ses, is_sns_url, load_certificates
from services.inbound.twilio_sms import (
    EMPTY_TWIML,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    TwilioSms,
    jurisdiction_of,
    keyword_action,
    twiml,
)
from tests.support.inbound_signers import (
    SendGridSigner,
    SnsSigner,
    mailgun_sign,
    recorded,
    twilio_request,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MAX_AGE = timedelta(minutes=10)
SKEW = timedelta(minutes=5)
TOPIC = "arn:aws:sns:us-west-2:123456789012:ses-feedback"


def _refused(reason: str, provider, delivery: Delivery, now: datetime = NOW) -> None:
    with pytest.raises(Rejected) as caught:
        provider.receive(delivery, now)
    assert caught.value.reason == reason


def test_event_id_is_uuid5_of_provider_and_event_id():
    assert inbound_event_id("sendgrid", "a") == inbound_event_id("sendgrid", "a")
    assert inbound_event_id("sendgrid", "a") != inbound_event_id("mailgun", "a")
    assert len(inbound_event_id("ses", "x")) == 36


# --- SendGrid ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sendgrid_signer() -> SendGridSigner:
    return SendGridSigner.generate()


def _sendgrid(signer: SendGridSigner) -> SendGrid:
    return SendGrid(load_public_key(signer.public_key), MAX_AGE, SKEW)


def _sendgrid_delivery(signer: SendGridSigner, body: bytes, at: datetime = NOW) -> Delivery:
    headers = {k.lower(): v for k, v in signer.headers(body, at).items()}
    return Delivery("http://inbound/sendgrid/events", headers, body)


def test_sendgrid_verified_batch_gives_one_opt_out_per_opt_out_event(sendgrid_signer):
    body = json.dumps(recorded("sendgrid_events.json")["body"]).encode()
    outcome = _sendgrid(sendgrid_signer).receive(_sendgrid_delivery(sendgrid_signer, body), NOW)
    assert outcome.ignored == 1
    assert [o.provider_event_id for o in outcome.opt_outs] == [
        "zmzJhfJgAfUSOW80yEbPyw==",
        "ahSCB7xYcXFb-hEaawsPRw==",
        "37nvH5QBz858KGVYCM4uOA==",
    ]
    first = outcome.opt_outs[0].fields
    assert first["email"] == "example@test.com"
    assert first["scopes"] == ["EMAIL_MARKETING"] and first["source"] == "PROVIDER_WEBHOOK"
    assert first["requested_at"] == datetime.fromtimestamp(1513299569, tz=UTC)


def test_sendgrid_refuses_tampered_stale_future_and_unsigned(sendgrid_signer):
    provider = _sendgrid(sendgrid_signer)
    body = json.dumps(recorded("sendgrid_events.json")["body"]).encode()
    good = _sendgrid_delivery(sendgrid_signer, body)
    _refused("bad_signature", provider, Delivery(good.url, good.headers, body.replace(b"third", b"fourth")))
    _refused("stale", provider, _sendgrid_delivery(sendgrid_signer, body, NOW - timedelta(minutes=11)))
    _refused("stale", provider, _sendgrid_delivery(sendgrid_signer, body, NOW + timedelta(minutes=6)))
    _refused("bad_signature", provider, Delivery(good.url, {}, body))
    other = SendGridSigner.generate()
    _refused("bad_signature", provider, _sendgrid_delivery(other, body))
    # A signed timestamp moved: the signature covers it.
    moved = {**good.headers, "x-twilio-email-event-webhook-timestamp": str(int(NOW.timestamp()) + 1)}
    _refused("bad_signature", provider, Delivery(good.url, moved, body))


def test_sendgrid_incomplete_opt_out_event_is_skipped_not_the_batch(sendgrid_signer):
    events = recorded("sendgrid_events.json")["body"]
    del events[1]["sg_event_id"]
    body = json.dumps(events).encode()
    outcome = _sendgrid(sendgrid_signer).receive(_sendgrid_delivery(sendgrid_signer, body), NOW)
    assert (len(outcome.opt_outs), outcome.ignored, outcome.invalid) == (2, 1, 1)


def test_sendgrid_signed_garbage_is_malformed(sendgrid_signer):
    _refused("malformed", _sendgrid(sendgrid_signer), _sendgrid_delivery(sendgrid_signer, b"{not json"))


def test_sendgrid_key_setting_must_be_base64_der_p256():
    with pytest.raises(ConfigurationError, match="base64 DER"):
        load_public_key("not a key")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = p384.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigurationError, match="P-256"):
        load_public_key(base64.b64encode(der).decode())


# --- Mailgun -------------------------------------------------------------------------------
KEY = "test-mailgun-signing-key"


def _mailgun() -> Mailgun:
    return Mailgun(SecretStr(KEY), MAX_AGE, SKEW)


def _mailgun_delivery(
    name: str = "mailgun_unsubscribed.json", at: datetime = NOW, key: str = KEY
) -> Delivery:
    return Delivery("http://inbound/mailgun/events", {}, mailgun_sign(recorded(name)["body"], key, at))


@pytest.mark.parametrize(
    ("name", "event_id", "email"),
    [
        ("mailgun_unsubscribed.json", "Ase7i2zsRYeDXztHGENqRA", "alice@example.com"),
        ("mailgun_complained.json", "ncV2XwymRUKbPek_MIM-Gw", "bob@example.com"),
    ],
)
def test_mailgun_verified_event_is_one_opt_out_with_its_token(name, event_id, email):
    delivery = _mailgun_delivery(name)
    outcome = _mailgun().receive(delivery, NOW)
    assert [o.provider_event_id for o in outcome.opt_outs] == [event_id]
    assert outcome.opt_outs[0].fields["email"] == email
    assert outcome.replay_token == json.loads(delivery.body)["signature"]["token"]


def test_mailgun_refuses_wrong_key_stale_and_tampered():
    provider = _mailgun()
    _refused("bad_signature", provider, _mailgun_delivery(key="another-key"))
    _refused("stale", provider, _mailgun_delivery(at=NOW - timedelta(minutes=11)))
    payload = json.loads(_mailgun_delivery().body)
    payload["signature"]["timestamp"] = str(int(payload["signature"]["timestamp"]) + 1)
    _refused("bad_signature", provider, Delivery("u", {}, json.dumps(payload).encode()))
    _refused("bad_signature", provider, Delivery("u", {}, b'{"event-data": {}}'))


def test_mailgun_other_events_are_ignored():
    payload = recorded("mailgun_unsubscribed.json")["body"]
    payload["event-data"]["event"] = "delivered"
    delivery = Delivery("u", {}, mailgun_sign(payload, KEY, NOW))
    outcome = _mailgun().receive(delivery, NOW)
    assert outcome.opt_outs == () and outcome.ignored == 1 and outcome.replay_token


# --- SES through SNS -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sns_signer() -> SnsSigner:
    return SnsSigner.generate()


@pytest.fixture
def ses(sns_signer: SnsSigner, tmp_path: Path) -> Ses:
    keys = load_certificates(sns_signer.write_certificate(tmp_path))
    return Ses(tuple(keys), frozenset({TOPIC}), timedelta(hours=1), SKEW)


def _sns_delivery(signer: SnsSigner, name: str, at: datetime = NOW, **changes: str) -> Delivery:
    data = recorded(name)
    message = signer.sign({**data["body"], **changes}, at)
    headers = {k.lower(): v for k, v in data["headers"].items()}
    return Delivery("http://inbound/ses/sns", headers, json.dumps(message).encode())


def test_ses_complaint_v1_is_one_opt_out_per_complained_recipient(ses, sns_signer):
    outcome = ses.receive(_sns_delivery(sns_signer, "ses_complaint.json"), NOW)
    assert [o.provider_event_id for o in outcome.opt_outs] == ["22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"]
    fields = outcome.opt_outs[0].fields
    assert fields["email"] == "richard@example.com" and fields["scopes"] == ["EMAIL_MARKETING"]
    assert fields["requested_at"] == datetime(2016, 1, 27, 14, 59, 38, 237000, tzinfo=UTC)


def test_ses_subscription_v2_unsubscribe_all_is_an_opt_out(ses, sns_signer):
    outcome = ses.receive(_sns_delivery(sns_signer, "ses_subscription.json"), NOW)
    assert [o.fields["email"] for o in outcome.opt_outs] == ["recipient@example.com"]


def test_ses_topic_only_subscription_change_is_ignored(ses, sns_signer):
    data = recorded("ses_subscription.json")
    record = json.loads(data["body"]["Message"])
    record["subscription"]["newTopicPreferences"]["unsubscribeAll"] = False
    delivery = _sns_delivery(sns_signer, "ses_subscription.json", Message=json.dumps(record))
    outcome = ses.receive(delivery, NOW)
    assert outcome.opt_outs == () and outcome.ignored == 1


def test_ses_several_recipients_get_distinct_event_ids(ses, sns_signer):
    record = json.loads(recorded("ses_complaint.json")["body"]["Message"])
    record["complaint"]["complainedRecipients"].append({"emailAddress": "jane@example.com"})
    outcome = ses.receive(_sns_delivery(sns_signer, "ses_complaint.json", Message=json.dumps(record)), NOW)
    message_id = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"
    assert [o.provider_event_id for o in outcome.opt_outs] == [message_id, f"{message_id}/1"]


def test_ses_subscription_confirmation_gives_the_url_to_confirm(ses, sns_signer):
    outcome = ses.receive(_sns_delivery(sns_signer, "sns_subscription_confirmation.json"), NOW)
    assert outcome.opt_outs == ()
    assert outcome.confirm_url is not None and outcome.confirm_url.startswith(
        "https://sns.us-west-2.amazonaws.com/"
    )


def test_ses_refuses_forged_stale_foreign_topic_and_foreign_cert_url(ses, sns_signer):
    good = _sns_delivery(sns_signer, "ses_complaint.json")
    message = json.loads(good.body)
    tampered = {**message, "Message": message["Message"].replace("richard", "robert")}
    _refused("bad_signature", ses, Delivery(good.url, good.headers, json.dumps(tampered).encode()))
    _refused("bad_signature", ses, _sns_delivery(SnsSigner.generate(), "ses_complaint.json"))
    _refused("stale", ses, _sns_delivery(sns_signer, "ses_complaint.json", NOW - timedelta(hours=2)))
    _refused("unknown_topic", ses, _sns_delivery(sns_signer, "ses_complaint.json", TopicArn=TOPIC + "-other"))
    evil = "https://sns.us-west-2.amazonaws.com.evil.example/cert.pem"
    _refused("bad_signature", ses, _sns_delivery(sns_signer, "ses_complaint.json", SigningCertURL=evil))
    _refused("bad_signature", ses, _sns_delivery(sns_signer, "ses_complaint.json", SignatureVersion="3"))
    wrong_type = Delivery(
        good.url, {**good.headers, "x-amz-sns-message-type": "SubscriptionConfirmation"}, good.body
    )
    _refused("malformed", ses, wrong_type)


def test_sns_url_pattern():
    assert is_sns_url("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem")
    assert is_sns_url("https://sns.cn-north-1.amazonaws.com.cn/x.pem")
    assert not is_sns_url("http://sns.eu-west-1.amazonaws.com/x.pem")
    assert not is_sns_url("https://sns.eu-west-1.amazonaws.com.attacker.net/x.pem")
    assert not is_sns_url("https://s3.amazonaws.com/x.pem")


def test_sns_certificate_setting_must_be_a_pem_certificate(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("nothing here")
    with pytest.raises(ConfigurationError, match="OPTOUT_INBOUND_SNS_CERTIFICATE"):
        load_certificates(bad)


# --- Twilio SMS ----------------------------------------------------------------------------
TOKEN = "test-twilio-token"
URL = "https://hooks.example.com/twilio/sms"


def _twilio(jurisdiction: str | None = None) -> TwilioSms:
    return TwilioSms(SecretStr(TOKEN), jurisdiction, "Unsubscribed & done.", "Welcome back.")


def _sms(body_text: str, url: str = URL, token: str = TOKEN, **more: str) -> Delivery:
    params = {**recorded("twilio_sms_stop.json")["params"], "Body": body_text, **more}
    body, headers = twilio_request(token, url, params)
    return Delivery(url, {k.lower(): v for k, v in headers.items()}, body)


def test_sms_stop_is_an_sms_opt_out_with_the_confirmation_twiml():
    outcome = _twilio().receive(_sms("Stop."), NOW)
    (opt_out,) = outcome.opt_outs
    assert opt_out.provider_event_id == "SM1f0e8ae6ade43cb3c0ce4525424e404f"
    assert opt_out.fields["phone"] == "+12125551234"
    assert opt_out.fields["scopes"] == ["SMS_MARKETING"] and opt_out.fields["source"] == "SMS_REPLY"
    assert opt_out.fields["action"] == "OPT_OUT" and opt_out.fields["jurisdiction"] == "US"
    assert outcome.reply.body.endswith("<Response><Message>Unsubscribed &amp; done.</Message></Response>")
    assert outcome.reply.content_type == "application/xml"


def test_sms_start_is_an_opt_in_and_other_text_publishes_nothing():
    start = _twilio().receive(_sms(" start "), NOW)
    assert start.opt_outs[0].fields["action"] == "OPT_IN"
    assert "Welcome back." in start.reply.body
    other = _twilio().receive(_sms("what are your hours?"), NOW)
    assert other.opt_outs == () and other.ignored == 1 and other.reply.body == EMPTY_TWIML


def test_sms_refuses_wrong_token_other_url_and_tampered_params():
    provider = _twilio()
    _refused("bad_signature", provider, _sms("STOP", token="other"))
    signed_elsewhere = _sms("STOP", url="http://internal:8090/twilio/sms")
    _refused("bad_signature", provider, Delivery(URL, signed_elsewhere.headers, signed_elsewhere.body))
    good = _sms("STOP")
    form = parse_qs(good.body.decode())
    assert form["From"] == ["+12125551234"]
    _refused(
        "bad_signature", provider, Delivery(URL, good.headers, good.body.replace(b"%2B1212", b"%2B1213"))
    )
    _refused("bad_signature", provider, Delivery(URL, {}, good.body))


def test_sms_jurisdiction_from_the_number_or_the_setting():
    assert jurisdiction_of("+14165550123") == "CA"  # Toronto area code
    assert jurisdiction_of("+12125550123") == "US"
    assert jurisdiction_of("+447700900123") == "GB"  # by the country code
    assert jurisdiction_of("+18005550123") == "US"  # toll-free: the +1 main region
    assert jurisdiction_of("not a number") is None
    outcome = _twilio("US").receive(_sms("STOP", From="+14165550123"), NOW)
    assert outcome.opt_outs[0].fields["jurisdiction"] == "US"


def test_twiml_escapes_the_text():
    assert (
        twiml("a < b")
        == '<?xml version="1.0" encoding="UTF-8"?><Response><Message>a &lt; b</Message></Response>'
    )


_EDGES = st.text(alphabet=st.sampled_from(list(" \t\n.!?,;:-_'\"()*¡¿…。\u00a0")), max_size=6)


@given(
    keyword=st.sampled_from(sorted(OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS)),
    cases=st.lists(st.booleans(), min_size=12, max_size=12),
    before=_EDGES,
    after=_EDGES,
)
def test_keywords_match_in_any_case_with_surrounding_spaces_and_punctuation(keyword, cases, before, after):
    mixed = "".join(c.lower() if lower else c for c, lower in zip(keyword, cases, strict=False))
    expected = Action.OPT_OUT if keyword in OPT_OUT_KEYWORDS else Action.OPT_IN
    assert keyword_action(before + mixed + after) is expected


@given(
    keyword=st.sampled_from(sorted(OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS)),
    where=st.integers(min_value=0, max_value=20),
    extra=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=3),
)
def test_a_keyword_with_anything_added_inside_or_next_to_it_is_no_action(keyword, where, extra):
    at = where % (len(keyword) + 1)
    text = keyword[:at] + extra + keyword[at:]
    if text.upper() in OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS:  # e.g. STOP + ALL
        return
    assert keyword_action(text) is None
    assert keyword_action(keyword + " " + extra) is None


@pytest.mark.parametrize("text", ["STOP please", "don't stop", "STOP ALL", "S T O P", "stopp", "", "!!!"])
def test_keywords_inside_other_text_do_not_count(text):
    assert keyword_action(text) is None
