"""``SuppressionClient`` (services/suppression/client.py) on the real broker: messages
written straight to an isolated compacted topic, as intake writes them; load reads to the
end offsets, a tombstone removes a subject, identifiers of every kind are normalized and
hashed as intake does, scopes filter, bad identifiers and a missing topic fail clearly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from services.common.avro import default_codec
from services.common.errors import RetriableError
from services.common.kafka import make_producer
from services.common.settings import Settings
from services.domain.identity import sha256_hex
from services.domain.subjects import BadIdentifier, ScopeState, state_record
from services.suppression.client import SuppressionClient
from services.suppression.publish_state import publish_state
from tests.support.pipeline import isolated_settings, wait_until

pytestmark = pytest.mark.integration

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ADA = f"email_sha256:{sha256_hex('ada@example.com')}"
PHONE = f"phone_sha256:{sha256_hex('+12025550143')}"
BOB = f"email_sha256:{sha256_hex('bob@example.com')}"


def _publish(cfg: Settings, states: dict[str, list[ScopeState]]) -> None:
    producer = make_producer(cfg)
    codec = default_codec()
    for subject, scopes in states.items():
        record = state_record(subject, scopes, AT)
        value = None if record is None else codec.encode("SuppressionState", record)
        producer.produce(cfg.suppressions_topic, key=subject, value=value)
    assert producer.flush(30) == 0


def test_load_ask_and_tombstones(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(base_settings)
    out = ScopeState("EMAIL_MARKETING", True, AT, "e1", "OPT_OUT")
    sms = ScopeState("SMS_MARKETING", True, AT, "e2", "OPT_OUT")
    back_in = ScopeState("EMAIL_MARKETING", False, AT, "e3", "OPT_IN")
    _publish(cfg, {ADA: [out], PHONE: [sms], "cust:c-1": [out, sms], BOB: [out]})
    _publish(cfg, {BOB: [back_in]})  # a tombstone: Bob opted back in
    client = SuppressionClient.from_settings(cfg)
    try:
        assert client.load(timeout=60) == 3
        assert client.subjects() == {ADA, PHONE, "cust:c-1"}
        # Loading again with nothing new returns at once (it waited for the low watermark).
        assert client.load(timeout=10) == 3
        assert client.is_suppressed(email=" Ada@Example.COM ")
        assert client.is_suppressed(email_sha256=ADA.split(":")[1].upper(), scope="EMAIL_MARKETING")
        assert not client.is_suppressed(email="ada@example.com", scope="SMS_MARKETING")
        assert client.is_suppressed(phone="(202) 555-0143", scope="SMS_MARKETING")
        assert client.is_suppressed(customer_id="c-1", scope="ALL")
        assert not client.is_suppressed(email="bob@example.com")  # the tombstone
        assert not client.is_suppressed(email="carol@example.com", phone="+1 202 555 0199")
        assert client.is_suppressed(email="carol@example.com", customer_id="c-1")  # any identifier
        assert client.states(ADA) == (out,)
        with pytest.raises(BadIdentifier):
            client.is_suppressed(email="not an email")
        with pytest.raises(ValueError, match="at least one identifier"):
            client.is_suppressed(scope="EMAIL_MARKETING")
        _publish(cfg, {ADA: [ScopeState("EMAIL_MARKETING", False, AT, "e4", "OPT_IN")]})

        def opted_in() -> bool:
            client.poll(0.2)
            return not client.is_suppressed(email="ada@example.com")

        wait_until(opted_in, timeout=30, message="the client polls the newer state")
    finally:
        client.close()


def test_a_missing_topic_says_so(base_settings: dict[str, Any]) -> None:
    cfg = Settings(**{**base_settings, "topic_prefix": "never-created."})
    client = SuppressionClient.from_settings(cfg)
    try:
        with pytest.raises(RetriableError, match="optout topics create"):
            client.load(timeout=5)
    finally:
        client.close()


def test_publish_state_puts_states_recorded_before_the_topic_on_it(base_settings: dict[str, Any]) -> None:
    """``optout suppression-state publish``: rows already in suppression_state (as migration
    0007's backfill leaves them) reach the topic; a subject opted back in everywhere is a
    tombstone."""
    cfg = isolated_settings(base_settings)
    rows = [
        (ADA, "EMAIL_MARKETING", True, "e1", "OPT_OUT"),
        (ADA, "SMS_MARKETING", False, "e2", "OPT_IN"),
        (BOB, "EMAIL_MARKETING", False, "e3", "OPT_IN"),
        ("cust:c-9", "THIRD_PARTY_SHARING", True, "e4", "OPT_OUT"),
    ]
    with psycopg.connect(cfg.dsn()) as conn:
        for subject, scope, suppressed, event_id, action in rows:
            conn.execute(
                "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, "
                "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (subject, scope, suppressed, AT, event_id, action, AT),
            )
    assert publish_state(cfg, make_producer(cfg), default_codec(), AT) == (2, 1)
    client = SuppressionClient.from_settings(cfg)
    try:
        client.load(timeout=60)
        assert client.subjects() == {ADA, "cust:c-9"}
        assert client.is_suppressed(email="ada@example.com", scope="EMAIL_MARKETING")
        assert not client.is_suppressed(email="ada@example.com", scope="SMS_MARKETING")
        assert client.states(ADA)[1] == ScopeState("SMS_MARKETING", False, AT, "e2", "OPT_IN")
    finally:
        client.close()
