"""``SuppressionClient`` (services/suppression/client.py) on the real broker: messages
written straight to an isolated compacted topic, as intake writes them; load reads to the
end offsets, a tombstone removes a subject, identifiers of every kind are normalized and
hashed as intake does, scopes filter, bad identifiers and a missing topic fail clearly."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from services.common.avro import default_codec
from services.common.db import advisory_key
from services.common.errors import RetriableError
from services.common.kafka import make_producer
from services.common.settings import Settings
from services.domain.identity import sha256_hex
from services.domain.subjects import BadIdentifier, ScopeState, state_record
from services.intake.states import LOCK_NAMESPACE
from services.intake.states_backfill import publish_state
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


def test_publish_state_waits_for_intake_and_leaves_the_newest_state_last(
    base_settings: dict[str, Any],
) -> None:
    """The backfill may run while intake runs: it publishes under intake's per-subject locks,
    so a subject intake is publishing is read after intake's change and published after it
    (before, the backfill's older read could land last on the topic and stay there)."""
    cfg = isolated_settings(base_settings)
    insert = (
        "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at) "
        "VALUES (%s, 'EMAIL_MARKETING', %s, %s, %s, %s, %s) ON CONFLICT (subject, scope) DO UPDATE "
        "SET suppressed = excluded.suppressed, event_id = excluded.event_id, action = excluded.action"
    )
    with psycopg.connect(cfg.dsn(), autocommit=True) as conn:
        conn.execute(insert, (ADA, True, AT, "e1", "OPT_OUT", AT))
    result: list[tuple[int, int]] = []
    with psycopg.connect(cfg.dsn()) as intake:
        # Intake is publishing Ada's state: it holds her lock until the broker acknowledged it.
        intake.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(LOCK_NAMESPACE, ADA),))

        def run_backfill() -> None:
            result.append(publish_state(cfg, make_producer(cfg), default_codec(), AT))

        backfill = threading.Thread(target=run_backfill, daemon=True)
        backfill.start()

        def backfill_waits() -> bool:
            with psycopg.connect(cfg.dsn()) as probe:
                row = probe.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone()
            return row is not None and row[0] == 1

        wait_until(backfill_waits, timeout=30, message="the backfill waits for the subject intake holds")
        # Meanwhile Ada opted back in; intake publishes that (a tombstone) and lets go.
        with psycopg.connect(cfg.dsn(), autocommit=True) as conn:
            conn.execute(insert, (ADA, False, AT, "e2", "OPT_IN", AT))
        _publish(cfg, {ADA: [ScopeState("EMAIL_MARKETING", False, AT, "e2", "OPT_IN")]})
        intake.commit()
    backfill.join(timeout=60)
    assert result == [(0, 1)]  # it read Ada's state after intake's change: a tombstone
    client = SuppressionClient.from_settings(cfg)
    try:
        client.load(timeout=60)
        assert not client.is_suppressed(email="ada@example.com")
    finally:
        client.close()
