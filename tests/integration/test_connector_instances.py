"""Two instances of one destination's connector (two consumers of different partitions)
get two commands for the same person at the same moment: an older opt-in and a newer
opt-out. Whatever the timing, the newer request is what the destination ends with: the
instances take a per-person lock in PostgreSQL (transaction-level advisory locks, which
PgBouncer's transaction pooling keeps) across "read the newest applied, apply, record"."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Message

from services.common.clock import ManualClock, to_millis
from services.common.contract import Action
from services.common.settings import Settings
from services.connectors.dedupe import DedupeStore, lock_key
from services.connectors.kit import Command, Connector, ConnectorStep, Outcome
from services.domain.identity import sha256_hex
from tests.support.fake_kafka import FakeBroker, FakeProducer
from tests.support.pipeline import wait_until
from tests.unit.test_steps import CODEC

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EMAIL = "ada@example.com"


class Destination:
    """What the provider holds for the person, and the order calls reached it."""

    def __init__(self) -> None:
        self.suppressed: bool | None = None
        self.calls: list[str] = []
        self.lock = threading.Lock()


class Slow(Connector):
    """Applies to ``Destination``; the opt-in waits for ``release`` before it lands."""

    destination = "email_provider"

    def __init__(self, held: Destination, release: threading.Event | None = None) -> None:
        self.held = held
        self.release = release
        self.started = threading.Event()

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        self.started.set()
        if self.release is not None:
            assert self.release.wait(30)
        with self.held.lock:
            for command in commands:
                self.held.suppressed = not command.opt_in
                self.held.calls.append(command.action.value)
        return [Outcome.applied(c.command_id) for c in commands]


def _message(action: Action, minutes_ago: int) -> Message:
    record: dict[str, Any] = {
        "command_id": str(uuid.uuid4()),
        "request_id": f"evt-{uuid.uuid4()}",
        "destination": "email_provider",
        "customer_id": None,
        "email": EMAIL,
        "phone": None,
        "postal_address": None,
        "email_sha256": None,
        "phone_sha256": None,
        "scopes": ["EMAIL_MARKETING"],
        "issued_at": to_millis(NOW),
        "deadline": to_millis(NOW + timedelta(days=10)),
        "action": action.value,
        "requested_at": to_millis(NOW - timedelta(minutes=minutes_ago)),
        "device_id": None,
    }
    value = CODEC.encode("SuppressionCommand", record)
    return Message(topic="t", partition=0, offset=0, key=b"k", value=value)


def _waiting_on_advisory_lock(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return row is not None and row[0] > 0


def test_two_instances_end_with_the_newer_request_whatever_the_timing(base_settings: dict[str, Any]) -> None:
    cfg = Settings(**base_settings, topic_prefix="inst.")
    held = Destination()
    release = threading.Event()
    opt_in, opt_out = _message(Action.OPT_IN, 5), _message(Action.OPT_OUT, 1)
    slow, fast = Slow(held, release), Slow(held)
    steps = [
        ConnectorStep(
            cfg,
            connector,
            FakeProducer(FakeBroker()),
            CODEC,
            ManualClock(NOW),
            DedupeStore(cfg.dsn(), "email_provider"),
        )
        for connector in (slow, fast)
    ]
    first = threading.Thread(target=steps[0].submit, args=([opt_in],))
    second = threading.Thread(target=steps[1].submit, args=([opt_out],))
    try:
        first.start()
        assert slow.started.wait(30)  # instance 1 is inside apply with the older opt-in
        second.start()
        # Instance 2 either waits for instance 1's lock, or (without the lock) applies its
        # opt-out at once; either way let instance 1 finish only then.
        wait_until(
            lambda: not second.is_alive() or _waiting_on_advisory_lock(cfg.dsn()),
            timeout=30,
            message="instance 2 applied or waits",
        )
        release.set()
        first.join(30)
        second.join(30)
        assert not first.is_alive() and not second.is_alive()
        assert held.suppressed is True, held.calls  # the newer opt-out stands
        assert held.calls[-1] == "OPT_OUT"
    finally:
        release.set()
        for step in steps:
            step.close()


def test_lock_keys_are_per_destination_and_person() -> None:
    subject = f"email_sha256:{sha256_hex(EMAIL)}"
    assert lock_key("email_provider", subject) == lock_key("email_provider", subject)
    assert lock_key("email_provider", subject) != lock_key("mail_house", subject)
    assert lock_key("email_provider", subject) != lock_key("email_provider", "cust:1")
    assert -(2**63) <= lock_key("email_provider", subject) < 2**63
