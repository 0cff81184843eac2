"""The ``sms_optout_list`` connector as a real consume loop on the real broker and database,
talking to the AWS End User Messaging SMS stand-in over HTTP through botocore: STOP, START,
STOP for one number ends opted out with three acknowledgements in order; re-sent commands are
acknowledged again without a new call; a refused key acknowledges nothing until it works;
calls over HTTP are not held ~40 ms each by Nagle and delayed ACKs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from services.common.avro import default_codec
from services.common.clock import to_millis
from services.common.contract import AckStatus, Destination, Identifier, Scope
from services.common.kafka import DeliveryTracker, create_topics, make_producer
from services.common.settings import Settings
from services.connectors import sms_optout_list as sms
from services.connectors.kit import run_connector
from services.standins import web
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import StandinServer
from tests.support.commands import make_command
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration

NAME = "sms_us"
KEY_ID, SECRET = "AKIASMSINTEGRATION", "sms-integration-secret"
FAST_RETRIES = {"connector_retry_initial_seconds": 0.05, "connector_retry_max_backoff_seconds": 0.5}


def destination(url: str) -> Destination:
    return Destination(
        id=NAME,
        scopes=frozenset({Scope.SMS_MARKETING}),
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.PHONE}),
        requires_one_of=frozenset({Identifier.PHONE}),
        kind=sms.KIND,
        options={
            "region": "us-east-1",
            "opt_out_list_name": "optout",
            "endpoint_url": url,
            "credentials_retry_seconds": 0.2,
        },
        credentials={"access_key_id": SecretStr(KEY_ID), "secret_access_key": SecretStr(SECRET)},
    )


def command(phone: str, action: str, offset: int = 0) -> dict[str, Any]:
    now = datetime.now(UTC) + timedelta(milliseconds=offset)
    return {
        "command_id": str(uuid.uuid4()),
        "request_id": f"evt-{uuid.uuid4()}",
        "destination": NAME,
        "customer_id": None,
        "email": None,
        "phone": phone,
        "postal_address": None,
        "email_sha256": None,
        "phone_sha256": None,
        "scopes": ["SMS_MARKETING"],
        "issued_at": to_millis(now),
        "deadline": to_millis(now + timedelta(days=14)),
        "action": action,
        "requested_at": to_millis(now),
        "device_id": None,
    }


def publish(cfg: Settings, batch: list[dict[str, Any]]) -> None:
    codec = default_codec()
    tracker = DeliveryTracker(make_producer(cfg))
    for record in batch:  # one number: one key, so one partition keeps their order
        tracker.produce(
            cfg.suppress_topic(NAME), codec.encode("SuppressionCommand", record), key=record["phone"][-4:]
        )
    tracker.wait()


def test_stop_start_stop_ends_opted_out_acknowledged_in_order(base_settings: dict[str, Any]) -> None:
    standin = SmsOptOutStandin({KEY_ID: SECRET})
    cfg = isolated_settings(base_settings, **FAST_RETRIES)
    create_topics(cfg, [cfg.suppress_topic(NAME), cfg.suppress_dlq_topic(NAME)])
    phone, other = "+14155550123", "+16135550199"
    batch = [
        command(phone, "OPT_OUT", 0),
        command(phone, "OPT_IN", 1),
        command(phone, "OPT_OUT", 2),
        command(other, "OPT_IN", 3),  # never opted out: already in the state asked for
    ]
    with StandinServer(standin.handle, name="sms") as server:
        dest = destination(server.url)

        def main(settings: Settings, stop: Any) -> None:
            run_connector(settings, sms.build(dest, settings), stop)

        with running(main, cfg, "sms"):
            publish(cfg, batch)
            first = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=4)]
            calls = dict(standin.stats()["calls"])
            publish(cfg, batch[:2])  # re-sent: same command ids
            both = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=6)]
        assert standin.stats()["calls"] == calls  # answered from the store, not applied again

        acks = {a["command_id"]: a for a in first}
        status = [acks[c["command_id"]]["status"] for c in batch]
        assert status[2:] == ["APPLIED", "ALREADY_SUPPRESSED"]
        # The first STOP and the START: applied in order when they came in batches of their
        # own, or acknowledged without a call as superseded by the newer STOP of their batch
        # (the connector kit's newest-wins rule).
        for c in batch[:2]:
            ack = acks[c["command_id"]]
            assert ack["status"] == "APPLIED" or (ack["detail"] or "").startswith("superseded"), ack
        assert calls["PutOptedOutNumber"] >= 1 and calls.get("DeleteOptedOutNumber", 0) >= 1
        assert len(both) == 6 and {a["destination"] for a in both} == {NAME}
        assert standin.opted_out() == {phone}  # STOP, START, STOP: opted out

        reader = sms.build(dest, cfg)
        assert isinstance(reader, sms.SmsOptOutListConnector)
        assert list(reader.opted_out_numbers()) == [phone] and reader.is_opted_out(phone)
        assert not reader.is_opted_out(other)
        reader.close()


@pytest.mark.expected_errors(r"destination refuses our credentials")
def test_a_refused_key_acknowledges_nothing_until_it_works(base_settings: dict[str, Any]) -> None:
    standin = SmsOptOutStandin({KEY_ID: "rotated-at-aws"})
    cfg = isolated_settings(base_settings, **FAST_RETRIES)
    create_topics(cfg, [cfg.suppress_topic(NAME), cfg.suppress_dlq_topic(NAME)])
    batch = [command(f"+1415555{i:04d}", "OPT_OUT") for i in range(5)]
    with StandinServer(standin.handle, name="sms") as server:
        dest = destination(server.url)

        def main(settings: Settings, stop: Any) -> None:
            run_connector(settings, sms.build(dest, settings), stop)

        with running(main, cfg, "sms"):
            publish(cfg, batch)
            wait_until(lambda: standin.answers["InvalidSignatureException"] >= 2, 30, 0.1, "refusals")
            assert read_topic(cfg, cfg.acks_topic, settle=0.5, timeout=1) == []
            standin.set_keys({KEY_ID: SECRET})  # the key works again: resumes by itself
            acks = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=5)]
    assert {a["status"] for a in acks} == {AckStatus.APPLIED.value}
    assert standin.opted_out() == {c["phone"] for c in batch}


def test_calls_over_http_are_not_held_by_delayed_acknowledgements() -> None:
    """The stand-in server writes a response's headers and body in two writes: without
    TCP_NODELAY (the stdlib handler's ``disable_nagle_algorithm``) each call waited ~40 ms for
    the client's delayed ACK (100 calls one at a time took over 4 s). What it costs is measured
    by bench-e2e's sms_sender hop, not timed here; here: the flag is set on the server's
    handler, and a batch of 100 calls one at a time over real sockets all land."""
    assert web._handler_for(lambda request: web.Response(200), "sms").disable_nagle_algorithm
    standin = SmsOptOutStandin({KEY_ID: SECRET})
    with StandinServer(standin.handle, name="sms") as server:
        options = sms.SmsOptOutListOptions(
            region="us-east-1", opt_out_list_name="optout", endpoint_url=server.url, concurrency=1
        )
        connector = sms.SmsOptOutListConnector(NAME, options, sms.make_client(options, KEY_ID, SECRET, None))
        try:
            now = datetime.now(UTC)
            phones = [f"+1415555{n:04d}" for n in range(100)]
            outcomes = connector.apply(
                [make_command(now, NAME, phone=p, scopes=["SMS_MARKETING"]) for p in phones]
            )
        finally:
            connector.close()
    assert {o.status for o in outcomes} == {AckStatus.APPLIED}
    assert standin.opted_out() == set(phones)
