"""The ``ses`` connector as a real consume loop against the real broker and database,
talking SES v2 through botocore to moto's server mode (the SES emulator) on a free port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from services.common.avro import default_codec
from services.common.clock import to_millis
from services.common.contract import AckStatus, Destination, Identifier, Scope
from services.common.kafka import DeliveryTracker, create_topics, make_producer
from services.common.settings import Settings
from services.connectors import ses
from services.connectors.kit import Command, CredentialsRefused, run_connector
from services.standins.ses_emulator import CONTACT_LIST, TOPIC, AccessKey, SesEmulator
from tests.support.pipeline import isolated_settings, read_topic, running

pytestmark = pytest.mark.integration

NAME = "ses_main"
FAST_RETRIES = {"connector_retry_initial_seconds": 0.05, "connector_retry_max_backoff_seconds": 0.5}


def destination(emulator: SesEmulator, key: AccessKey, **options: Any) -> Destination:
    return Destination(
        id=NAME,
        scopes=frozenset({Scope.EMAIL_MARKETING}),
        identifiers=frozenset({Identifier.CUSTOMER_ID, Identifier.EMAIL}),
        requires_one_of=frozenset({Identifier.EMAIL}),
        kind=ses.KIND,
        options={
            "region": "us-east-1",
            "contact_list_name": CONTACT_LIST,
            "endpoint_url": emulator.url,
            **options,
        },
        credentials={
            "access_key_id": SecretStr(key.access_key_id),
            "secret_access_key": SecretStr(key.secret_access_key),
        },
    )


def records(count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    return [
        {
            "command_id": str(uuid.uuid4()),
            "request_id": f"evt-{uuid.uuid4()}",
            "destination": NAME,
            "customer_id": f"C-{tag}-{i}",
            "email": f"user{i}-{tag}@example.com",
            "phone": None,
            "postal_address": None,
            "email_sha256": None,
            "phone_sha256": None,
            "scopes": ["EMAIL_MARKETING"],
            "issued_at": to_millis(now),
            "deadline": to_millis(now + timedelta(days=10)),
            "action": "OPT_OUT",
            "requested_at": to_millis(now),
            "device_id": None,
        }
        for i in range(count)
    ]


def publish(cfg: Settings, batch: list[dict[str, Any]]) -> None:
    codec = default_codec()
    tracker = DeliveryTracker(make_producer(cfg))
    for record in batch:
        tracker.produce(
            cfg.suppress_topic(NAME), codec.encode("SuppressionCommand", record), key=record["request_id"]
        )
    tracker.wait()


@pytest.fixture
def emulator() -> Iterator[SesEmulator]:
    with SesEmulator() as running_emulator:
        yield running_emulator


def test_commands_become_unsubscribed_contacts_once(
    base_settings: dict[str, Any], emulator: SesEmulator
) -> None:
    cfg = isolated_settings(base_settings, **FAST_RETRIES)
    create_topics(cfg, [cfg.suppress_topic(NAME), cfg.suppress_dlq_topic(NAME)])
    dest = destination(emulator, emulator.key)
    batch = records(20)
    publish(cfg, batch)

    def main(settings: Settings, stop: Any) -> None:
        run_connector(settings, ses.build(dest, settings), stop)

    with running(main, cfg, "ses"):
        first = read_topic(cfg, cfg.acks_topic, expect=20)
        publish(cfg, batch[:5])  # re-sent: same command ids
        both = read_topic(cfg, cfg.acks_topic, expect=25)

    acks = [r.decoded() for r in both]
    assert len(first) == 20 and len(acks) == 25
    assert {a["command_id"] for a in acks} == {r["command_id"] for r in batch}
    assert {a["status"] for a in acks} == {AckStatus.APPLIED.value}
    assert {a["destination"] for a in acks} == {NAME}
    for record in batch[:5]:  # the re-sent ones were acknowledged again, identically
        twice = [a for a in acks if a["command_id"] == record["command_id"]]
        assert len(twice) == 2 and twice[0] == twice[1]

    client = emulator.client()
    for record in batch:  # read back: every address is on the list, unsubscribed from all
        contact = client.get_contact(ContactListName=CONTACT_LIST, EmailAddress=record["email"])
        assert contact.get("UnsubscribeAll") is True
    reader = ses.build(dest, cfg)
    assert isinstance(reader, ses.SesConnector)
    listed = sorted(reader.opted_out_addresses())
    assert listed == sorted(r["email"] for r in batch)  # one contact per address, no duplicates

    # Applying again at SES (no kit dedupe) changes nothing there.
    again = reader.apply([ses_command(r) for r in batch[:3]])
    assert {o.status for o in again} <= {AckStatus.APPLIED, AckStatus.ALREADY_SUPPRESSED}
    assert sorted(reader.opted_out_addresses()) == listed
    reader.close()


def ses_command(record: dict[str, Any]) -> Command:
    return Command.from_record(record)


def test_topic_option_opts_out_of_the_topic(base_settings: dict[str, Any], emulator: SesEmulator) -> None:
    conn = ses.build(destination(emulator, emulator.key, topic_name=TOPIC), Settings(**base_settings))
    assert isinstance(conn, ses.SesConnector)
    record = records(1)[0]
    emulator.client().create_contact(ContactListName=CONTACT_LIST, EmailAddress=record["email"])
    [outcome] = conn.apply([ses_command(record)])
    contact = conn.contact(record["email"])
    conn.close()
    assert outcome.status in {AckStatus.APPLIED, AckStatus.ALREADY_SUPPRESSED}
    assert contact is not None
    assert {"TopicName": TOPIC, "SubscriptionStatus": "OPT_OUT"} in contact.get("TopicPreferences", [])
    assert not contact.get("UnsubscribeAll")


def test_wrong_credentials_are_refused_and_the_right_ones_work(base_settings: dict[str, Any]) -> None:
    """moto checks SigV4 signatures and IAM policies when asked to (the emulator's
    ``authenticate``). Its check fails for paths holding an address ('@'), so GetContact
    and UpdateContact cannot be called in this mode; CreateContact and ListContacts can."""
    with SesEmulator(authenticate=True) as emulator:
        right = emulator.key
        batch = [ses_command(r) for r in records(3)]
        for key in (AccessKey(right.access_key_id, "wrong-secret"), AccessKey("AKIAUNKNOWNKEY", "x")):
            wrong = ses.build(destination(emulator, key), Settings(**base_settings))
            with pytest.raises(CredentialsRefused) as refused:
                wrong.apply(batch)
            wrong.close()
            assert not isinstance(refused.value, ses.SesMisconfigured)
            assert "SES refused our credentials" in str(refused.value)
        fixed = ses.build(destination(emulator, right), Settings(**base_settings))
        assert isinstance(fixed, ses.SesConnector)
        outcomes = fixed.apply(batch)
        listed = set(fixed.opted_out_addresses())
        fixed.close()
    assert {o.status for o in outcomes} == {AckStatus.APPLIED}
    assert listed == {c.email for c in batch}


def test_missing_contact_list_is_a_misconfiguration(
    base_settings: dict[str, Any], emulator: SesEmulator
) -> None:
    conn = ses.build(
        destination(emulator, emulator.key, contact_list_name="nosuch"), Settings(**base_settings)
    )
    with pytest.raises(ses.SesMisconfigured, match="contact list 'nosuch' not found"):
        conn.apply([ses_command(records(1)[0])])
    conn.close()
