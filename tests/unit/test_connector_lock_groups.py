"""A very large batch takes the people's advisory locks, applies and records in groups of at
most ``kit.MAX_LOCKED_SUBJECTS`` subjects (PostgreSQL's shared lock table is bounded: a
backlog's 5,000-command batch could otherwise fail with "out of shared memory" on every
retry); a usual batch is one group."""

from __future__ import annotations

from datetime import UTC, datetime

from services.common.clock import to_millis
from services.connectors.kit import MAX_LOCKED_SUBJECTS, lock_groups
from services.domain.identity import sha256_hex
from tests.support.commands import make_command
from tests.support.fake_kafka import FakeBroker, FakeProducer
from tests.unit.test_steps import (
    CODEC,
    FakeDedupeStore,
    ScriptedConnector,
    _acks,
    _command,
    _connector_step,
    _messages,
)

NOW = datetime(2026, 12, 1, 6, 0, 0, tzinfo=UTC)


def test_a_batch_is_locked_applied_and_recorded_in_groups_of_bounded_subjects() -> None:
    at = to_millis(NOW)
    small = [make_command(NOW, customer_id=f"c-{i}", requested_at=at) for i in range(10)]
    assert lock_groups(small) == [small]  # the usual case: one group
    assert lock_groups([]) == []
    many = [
        make_command(NOW, customer_id=f"c-{i}", email_sha256=sha256_hex(f"u{i}@example.com"), requested_at=at)
        for i in range(6_000)
    ]
    groups = lock_groups(many)
    assert [c for g in groups for c in g] == many  # in order, none lost
    assert len(groups) == 3
    assert all(sum(len(c.subjects()) for c in g) <= MAX_LOCKED_SUBJECTS for g in groups)
    unranked = [make_command(NOW, customer_id=f"c-{i}") for i in range(6_000)]  # version 1: no locks
    assert lock_groups(unranked) == [unranked]


def test_the_step_records_and_acknowledges_every_group_of_a_large_batch() -> None:
    producer, store, connector = FakeProducer(FakeBroker()), FakeDedupeStore(), ScriptedConnector()
    step = _connector_step(connector, producer, store)
    at = to_millis(NOW)
    records = [
        {
            **_command(),
            "email_sha256": sha256_hex(f"u{i}@example.com"),
            "customer_id": f"c-{i}",
            "requested_at": at,
        }
        for i in range(3_000)
    ]
    step.submit(
        _messages(
            step.settings.suppress_topic("email_provider"),
            [CODEC.encode("SuppressionCommand", r) for r in records],
        )
    )
    assert len(connector.calls) == len(store.locked) == 2  # two groups, each its own lock set
    assert all(len(subjects) <= MAX_LOCKED_SUBJECTS for subjects in store.locked)
    assert {a["command_id"] for a in _acks(producer, step.settings)} == {r["command_id"] for r in records}
