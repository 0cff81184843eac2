"""Issue #12's "done when" for SMS, across every part it touches: a person texts STOP, then
START, then STOP. Each text arrives as a signed Twilio webhook at ``optout run inbound``; intake
records it under the newest-wins rule; the ``sms_optout_list`` connector puts the number on
(and takes it off) the AWS End User Messaging SMS opt-out list of the stand-in, over HTTP via
botocore; the confirmer confirms each one. The number ends opted out, with three
confirmations (OPT_OUT, OPT_IN, OPT_OUT) that name the phone to text.

Real broker and database; the services run as consume loops in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.settings import Settings
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.inbound.base import inbound_event_id
from services.inbound.service import run as run_inbound
from services.intake.service import run as run_intake
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import StandinServer
from tests.support.inbound_signers import recorded, twilio_request
from tests.support.pipeline import free_port, isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.e2e

TWILIO_TOKEN = "e2e-twilio-auth-token"
DESTINATIONS = """
[[destinations]]
name = "sms_sender"
kind = "sms_optout_list"
scopes = ["SMS_MARKETING"]
identifiers = ["customer_id", "phone"]
requires_one_of = ["phone"]
[destinations.settings]
region = "us-east-1"
opt_out_list_name = "optout"
endpoint_url = "{url}"
"""


@pytest.fixture
def sms_pipeline(
    base_settings: dict[str, Any], tmp_path: Path
) -> Iterator[tuple[Settings, SmsOptOutStandin]]:
    port = free_port()
    defaults = Settings()
    # A loopback endpoint without credentials in the file: the connector signs with the
    # stand-in's development key (services/connectors/sms_optout_list.py).
    standin = SmsOptOutStandin({defaults.standin_sms_access_key_id: defaults.standin_sms_secret_access_key})
    with StandinServer(standin.handle, name="sms") as server:
        path = tmp_path / "destinations.toml"
        path.write_text(DESTINATIONS.format(url=server.url))
        cfg = isolated_settings(
            base_settings,
            destinations_file=path,
            inbound_port=port,
            inbound_public_url=f"http://127.0.0.1:{port}",
            inbound_twilio_auth_token=TWILIO_TOKEN,
            connector_retry_initial_seconds=0.05,
        )
        with (
            running(run_intake, cfg, "intake"),
            running(connector_runner("sms_sender", cfg), cfg, "sms_sender"),
            running(run_confirmer, cfg, "confirmer"),
            running(run_inbound, cfg, "inbound"),
        ):
            yield cfg, standin


def _text(client: httpx.Client, cfg: Settings, body: str, sid: str) -> httpx.Response:
    params = {**recorded("twilio_sms_stop.json")["params"], "Body": body, "MessageSid": sid, "SmsSid": sid}
    content, headers = twilio_request(TWILIO_TOKEN, cfg.inbound_public_url + "/twilio/sms", params)
    return client.post("/twilio/sms", content=content, headers=headers)


def _listed_is(standin: SmsOptOutStandin, phone: str, listed: bool) -> Callable[[], bool]:
    return lambda: (phone in standin.opted_out()) is listed


def test_stop_start_stop_by_text_ends_opted_out_with_three_confirmations(sms_pipeline) -> None:
    cfg, standin = sms_pipeline
    phone = recorded("twilio_sms_stop.json")["params"]["From"]
    texts = [("STOP", "SM" + "1" * 32), ("start", "SM" + "2" * 32), (" Stop. ", "SM" + "3" * 32)]
    with httpx.Client(base_url=cfg.inbound_public_url, timeout=30) as client:

        def listening() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(listening, timeout=30, message="the inbound service to listen")
        for n, (body, sid) in enumerate(texts, start=1):
            reply = _text(client, cfg, body, sid)
            assert reply.status_code == 200 and "<Message>" in reply.text  # the one confirmation text
            opted_out = body.strip(" .").upper() == "STOP"
            wait_until(
                _listed_is(standin, phone, opted_out),
                timeout=60,
                message=f"the number {'on' if opted_out else 'off'} the opt-out list after text {n}",
            )
            confirmed = read_topic(cfg, cfg.confirmations_topic, expect=n, timeout=60, settle=0)
            assert len(confirmed) == n

    by_request = {c["request_id"]: c for c in (r.decoded() for r in confirmed)}
    events = [inbound_event_id("twilio", sid) for _, sid in texts]
    assert [by_request[e]["action"] for e in events] == ["OPT_OUT", "OPT_IN", "OPT_OUT"]
    assert all(by_request[e]["notify_phone"] == phone for e in events)
    assert all(by_request[e]["scopes"] == ["SMS_MARKETING"] for e in events)
    assert phone in standin.opted_out()
