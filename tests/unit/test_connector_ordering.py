"""The kit's newest-wins rule at a destination: a command older than the newest request
applied there for the same person is acknowledged without calling the destination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.clock import to_millis
from services.common.contract import AckStatus, Action
from services.connectors.dedupe import Latest
from services.connectors.kit import SUPERSEDED, Command, superseded
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

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EMAIL = "ada@example.com"
SUBJECT = f"email_sha256:{sha256_hex(EMAIL)}"


def cmd(action: Action, minutes_ago: int, request_id: str | None = None, **fields: Any) -> Command:
    extra: dict[str, Any] = {"email": EMAIL, **fields}
    if request_id is not None:
        extra["request_id"] = request_id
    return make_command(
        NOW,
        action=action.value,
        requested_at=to_millis(NOW - timedelta(minutes=minutes_ago)),
        **extra,
    )


def latest(action: Action, minutes_ago: int, request_id: str = "evt-applied") -> dict[str, Latest]:
    return {SUBJECT: Latest(SUBJECT, NOW - timedelta(minutes=minutes_ago), action, request_id)}


def test_a_late_opt_in_never_undoes_a_newer_opt_out() -> None:
    late = cmd(Action.OPT_IN, minutes_ago=10)
    found = superseded([late], latest(Action.OPT_OUT, minutes_ago=1))
    assert found[late.command_id].status is AckStatus.ALREADY_SUPPRESSED
    assert found[late.command_id].detail == SUPERSEDED


def test_a_late_opt_out_never_undoes_a_newer_opt_in_and_newer_commands_apply() -> None:
    late = cmd(Action.OPT_OUT, minutes_ago=10)
    newer = cmd(Action.OPT_IN, minutes_ago=0)
    found = superseded([late, newer], latest(Action.OPT_IN, minutes_ago=1))
    assert found[late.command_id].status is AckStatus.APPLIED
    assert newer.command_id not in found


def test_on_a_tie_the_opt_out_applies_and_the_opt_in_does_not() -> None:
    out = cmd(Action.OPT_OUT, minutes_ago=1, request_id="evt-a")
    back_in = cmd(Action.OPT_IN, minutes_ago=1, request_id="evt-b")
    assert superseded([out], latest(Action.OPT_IN, minutes_ago=1)) == {}
    assert back_in.command_id in superseded([back_in], latest(Action.OPT_OUT, minutes_ago=1))
    # In one batch, too.
    assert set(superseded([back_in, out], {})) == {back_in.command_id}


def test_the_same_person_through_another_identifier_counts() -> None:
    by_hash = cmd(Action.OPT_IN, minutes_ago=5, email=None, email_sha256=sha256_hex(EMAIL))
    assert by_hash.command_id in superseded([by_hash], latest(Action.OPT_OUT, minutes_ago=1))
    other = cmd(Action.OPT_IN, minutes_ago=5, email="someone@example.com")
    assert superseded([other], latest(Action.OPT_OUT, minutes_ago=1)) == {}


def test_version_1_commands_always_apply() -> None:
    old = make_command(NOW, email=EMAIL)  # requested_at 0: a version-1 command
    assert old.requested_at is None
    assert superseded([old], latest(Action.OPT_IN, minutes_ago=1)) == {}


def test_the_step_acknowledges_a_stale_opt_in_without_calling_the_destination() -> None:
    producer, store = FakeProducer(FakeBroker()), FakeDedupeStore()
    connector = ScriptedConnector()
    step = _connector_step(connector, producer, store)
    topic = step.settings.suppress_topic("email_provider")
    out = {**_command(), "action": "OPT_OUT", "requested_at": to_millis(NOW - timedelta(minutes=1))}
    late_in = {**_command(), "action": "OPT_IN", "requested_at": to_millis(NOW - timedelta(minutes=5))}
    newer_in = {**_command(), "action": "OPT_IN", "requested_at": to_millis(NOW)}
    step.submit(_messages(topic, [CODEC.encode("SuppressionCommand", out)]))
    step.submit(_messages(topic, [CODEC.encode("SuppressionCommand", late_in)]))
    assert connector.calls == [[out["command_id"]]]  # the late opt-in reached no one
    step.submit(_messages(topic, [CODEC.encode("SuppressionCommand", newer_in)]))
    assert connector.calls[-1] == [newer_in["command_id"]]
    acks = {a["command_id"]: a for a in _acks(producer, step.settings)}
    assert acks[late_in["command_id"]]["status"] == "ALREADY_SUPPRESSED"
    assert acks[late_in["command_id"]]["detail"] == SUPERSEDED
    assert acks[newer_in["command_id"]]["status"] == "APPLIED"
    assert store.newest[f"email_sha256:{sha256_hex('x@example.com')}"].action is Action.OPT_IN
