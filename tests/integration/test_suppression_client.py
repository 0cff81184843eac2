"""``SuppressionClient`` (services/suppression/client.py) on the real broker: messages
written straight to an isolated compacted topic, as intake writes them; load reads to the
end offsets, a tombstone removes a subject, identifiers of every kind are normalized and
hashed as intake does, scopes filter, bad identifiers and a missing topic fail clearly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.avro import default_codec
from services.common.errors import RetriableError
from services.common.kafka import make_producer
from services.common.settings import Settings
from services.domain.identity import sha256_hex
from services.domain.subjects import BadIdentifier, ScopeState, state_record
from services.suppression.client import SuppressionClient
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
