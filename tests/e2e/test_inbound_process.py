"""``optout run inbound`` as its own process (production JSON logs at debug level): signed
provider webhooks carrying real-looking addresses and phone numbers become requests on the
topic, forged ones do not, SIGTERM stops it cleanly, and no log line carries the raw
email addresses or phone numbers (issue #12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.inbound.base import inbound_event_id
from tests.e2e.obs_support import ServiceProcesses, json_lines
from tests.support.inbound_signers import SendGridSigner, mailgun_sign, recorded, twilio_request
from tests.support.pipeline import free_port, isolated_settings, read_topic, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("service-processes")]

EMAILS = ["Ada.Lovelace1815@analytical-engine.example", "alan_turing+enigma@bletchley-park.example"]
PHONE = "+14165550142"
MAILGUN_KEY = "e2e-mailgun-signing-key"
TWILIO_TOKEN = "e2e-twilio-auth-token"


def test_inbound_process_publishes_signed_webhooks_and_logs_no_contact_details(
    base_settings: dict[str, Any], tmp_path: Path
):
    cfg = isolated_settings(base_settings)
    sendgrid = SendGridSigner.generate()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    services = ServiceProcesses(
        cfg,
        tmp_path,
        OPTOUT_INBOUND_PORT=str(port),
        OPTOUT_INBOUND_PUBLIC_URL=public,
        OPTOUT_INBOUND_SENDGRID_PUBLIC_KEY=sendgrid.public_key,
        OPTOUT_INBOUND_MAILGUN_SIGNING_KEY=MAILGUN_KEY,
        OPTOUT_INBOUND_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
    )
    proc = services.start("inbound")
    try:
        services.wait_ready(proc)

        def listening() -> bool:  # /readyz may answer a moment before the webhook port
            try:
                return httpx.get(public + "/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(listening, timeout=60, message="the webhook port to accept connections")
        events = recorded("sendgrid_events.json")["body"]
        events[1]["email"] = EMAILS[0]
        sendgrid_body = json.dumps(events[:2]).encode()
        mailgun = recorded("mailgun_unsubscribed.json")["body"]
        mailgun["event-data"]["recipient"] = EMAILS[1]
        invalid = recorded("mailgun_complained.json")["body"]
        invalid["event-data"]["recipient"] = "not-an-address " + EMAILS[1]
        params = {**recorded("twilio_sms_stop.json")["params"], "From": PHONE, "Body": "STOP"}
        sms_body, sms_headers = twilio_request(TWILIO_TOKEN, public + "/twilio/sms", params)
        with httpx.Client(base_url=public, timeout=30) as client:
            answers = [
                client.post(
                    "/sendgrid/events", content=sendgrid_body, headers=sendgrid.headers(sendgrid_body)
                ),
                client.post("/mailgun/events", content=mailgun_sign(mailgun, MAILGUN_KEY)),
                client.post("/mailgun/events", content=mailgun_sign(invalid, MAILGUN_KEY)),
                client.post("/twilio/sms", content=sms_body, headers=sms_headers),
            ]
            forged = [
                client.post("/mailgun/events", content=mailgun_sign(mailgun, "not-the-key")),
                client.post(
                    "/twilio/sms", content=sms_body, headers={**sms_headers, "X-Twilio-Signature": "x"}
                ),
            ]
        assert [a.status_code for a in answers] == [200, 200, 200, 200]
        assert [f.status_code for f in forged] == [401, 401]
        records = [r.decoded() for r in read_topic(cfg, cfg.requests_topic, expect=3, timeout=30)]
        assert sorted(r["event_id"] for r in records) == sorted(
            [
                inbound_event_id("sendgrid", events[1]["sg_event_id"]),
                inbound_event_id("mailgun", mailgun["event-data"]["id"]),
                inbound_event_id("twilio", params["MessageSid"]),
            ]
        )
        assert {r["email"] for r in records} == {EMAILS[0].lower(), EMAILS[1].lower(), None}
        assert [r["jurisdiction"] for r in records if r["phone"]] == ["CA"]  # 416: Toronto
    finally:
        codes = services.stop_all()
    assert codes == {"inbound": 0}

    lines = services.log_lines()
    logged = [line.get("event") for line in json_lines(lines)]
    assert "webhook published" in logged and "webhook refused" in logged
    assert "webhook event skipped: intake would refuse it" in logged
    needles = [*EMAILS, *(e.lower() for e in EMAILS), *(e.split("@")[0].lower() for e in EMAILS)]
    needles += [PHONE, PHONE[1:], PHONE[-10:]]
    leaks = [
        (needle, line[:300]) for needle in needles for _, _, line in lines if needle.lower() in line.lower()
    ]
    assert not leaks, f"{len(leaks)} log line(s) carry contact details, first: {leaks[:3]}"
