"""Pure confirmer logic: ack precedence, completion, the OptOutConfirmed record, the
sweeper's growing re-send interval and schedule (ManualClock), overdue formatting."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.cli.overdue import render_table
from services.common.avro import default_codec
from services.common.clock import ManualClock, to_millis
from services.common.contract import AckStatus
from services.common.errors import PoisonMessage
from services.confirmer.outcomes import (
    Ack,
    DestinationRow,
    RequestRow,
    RequestState,
    ack_from_record,
    apply_ack,
    confirmation_record,
    decode_ack,
    fold_acks,
    mismatch,
    request_state,
    supersedes,
)
from services.confirmer.overdue import OverdueRequest, describe_lateness
from services.confirmer.sweeper import SweepSchedule, next_reissue_at, reissue_interval
from tests.support.pipeline import ADDRESS

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
APPLIED, ALREADY, REJECTED = AckStatus.APPLIED, AckStatus.ALREADY_SUPPRESSED, AckStatus.REJECTED


def row(
    cid: str = "c1",
    status: str = "PENDING",
    dest: str = "email_provider",
    acked_at: datetime | None = None,
    detail: str | None = None,
) -> DestinationRow:
    return DestinationRow(cid, "evt-1", dest, status, detail, acked_at)


def ack(
    status: AckStatus,
    cid: str = "c1",
    minutes: int = 0,
    detail: str | None = None,
    dest: str = "email_provider",
    request_id: str = "evt-1",
) -> Ack:
    return Ack(cid, request_id, dest, status, detail, T0 + timedelta(minutes=minutes))


def request(email: str | None = "ada@example.com") -> RequestRow:
    return RequestRow(
        "evt-1",
        "PENDING",
        "cust-9",
        email,
        ADDRESS,
        ("EMAIL_MARKETING", "POSTAL_MARKETING"),
        T0 - timedelta(hours=1),
    )


# --- precedence ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("current", "incoming", "expected"),
    [
        ("PENDING", APPLIED, True),
        ("PENDING", ALREADY, True),
        ("PENDING", REJECTED, True),
        ("APPLIED", APPLIED, False),
        ("APPLIED", REJECTED, False),
        ("APPLIED", ALREADY, False),
        ("ALREADY_SUPPRESSED", REJECTED, False),
        ("ALREADY_SUPPRESSED", APPLIED, False),
        ("REJECTED", APPLIED, True),
        ("REJECTED", ALREADY, True),
        ("REJECTED", REJECTED, False),
    ],
)
def test_supersedes(current: str, incoming: AckStatus, expected: bool) -> None:
    assert supersedes(current, incoming) is expected


def test_a_late_rejection_never_undoes_a_success() -> None:
    rows = {"c1": row()}
    changed = fold_acks(rows, [ack(APPLIED, minutes=5), ack(REJECTED, minutes=1, detail="nope")])
    assert changed["c1"].status == "APPLIED"
    assert changed["c1"].acked_at == T0 + timedelta(minutes=5)
    assert changed["c1"].detail is None


def test_a_retried_command_that_succeeds_overrides_its_rejection() -> None:
    rejected = apply_ack(row(), ack(REJECTED, detail="mailbox full"))
    assert rejected.status == "REJECTED" and rejected.detail == "mailbox full"
    applied = apply_ack(rejected, ack(ALREADY, minutes=30))
    assert applied.status == "ALREADY_SUPPRESSED"
    assert applied.acked_at == T0 + timedelta(minutes=30)


def test_duplicates_change_nothing_and_unknown_commands_are_ignored() -> None:
    done = row(status="APPLIED", acked_at=T0)
    assert fold_acks({"c1": done}, [ack(APPLIED, minutes=9), ack(APPLIED, cid="zz")]) == {}
    first = apply_ack(row(), ack(REJECTED, detail="first"))
    assert apply_ack(first, ack(REJECTED, detail="second")).detail == "first"


@given(st.lists(st.sampled_from([APPLIED, ALREADY, REJECTED]), min_size=1, max_size=8))
def test_final_status_is_a_success_whenever_any_ack_succeeded(statuses: list[AckStatus]) -> None:
    acks = [ack(s, minutes=i) for i, s in enumerate(statuses)]
    final = fold_acks({"c1": row()}, acks)["c1"]
    successes = [a for a in acks if a.status is not REJECTED]
    if successes:
        # The first success wins and sticks, whatever arrives after it.
        assert final.status == successes[0].status.value
        assert final.acked_at == successes[0].acked_at
    else:
        assert final.status == "REJECTED" and final.acked_at == acks[0].acked_at


def test_mismatch_names_the_field_that_differs() -> None:
    assert mismatch(ack(APPLIED), row()) is None
    assert "request_id" in (mismatch(ack(APPLIED, request_id="other"), row()) or "")
    assert "destination" in (mismatch(ack(APPLIED, dest="mail_house"), row()) or "")


# --- completion ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("statuses", "state"),
    [
        (["APPLIED", "ALREADY_SUPPRESSED"], RequestState.CONFIRMED),
        (["APPLIED"], RequestState.CONFIRMED),
        (["APPLIED", "PENDING"], RequestState.PENDING),
        (["APPLIED", "REJECTED"], RequestState.NEEDS_ATTENTION),
        (["PENDING", "REJECTED"], RequestState.NEEDS_ATTENTION),
        (["PENDING"], RequestState.PENDING),
        ([], RequestState.PENDING),
    ],
)
def test_request_state(statuses: list[str], state: RequestState) -> None:
    assert request_state(statuses) is state


# --- the confirmation record -----------------------------------------------------------
def test_confirmation_names_each_destination_with_its_applied_time_and_the_email() -> None:
    dests = [
        row("c2", "ALREADY_SUPPRESSED", "mail_house", T0 + timedelta(minutes=2)),
        row("c1", "APPLIED", "email_provider", T0 + timedelta(minutes=1)),
    ]
    confirmed_at = T0 + timedelta(minutes=3)
    record = confirmation_record(request(), dests, confirmed_at)
    assert record["request_id"] == "evt-1"
    assert record["customer_id"] == "cust-9"
    assert record["notify_email"] == "ada@example.com"
    assert record["notify_postal_address"] is None  # email wins
    assert record["destinations"] == [
        {
            "destination": "email_provider",
            "status": "APPLIED",
            "applied_at": to_millis(T0 + timedelta(minutes=1)),
        },
        {
            "destination": "mail_house",
            "status": "ALREADY_SUPPRESSED",
            "applied_at": to_millis(T0 + timedelta(minutes=2)),
        },
    ]
    assert record["requested_at"] == to_millis(T0 - timedelta(hours=1))
    assert record["confirmed_at"] == to_millis(confirmed_at)
    # It encodes with the contract and carries nothing beyond the schema's fields.
    codec = default_codec()
    _, decoded = codec.decode(codec.encode("OptOutConfirmed", record), expect="OptOutConfirmed")
    assert decoded["destinations"][1]["applied_at"] == T0 + timedelta(minutes=2)
    assert set(decoded) == set(record)


def test_confirmation_falls_back_to_the_postal_address_without_an_email() -> None:
    record = confirmation_record(request(email=None), [row("c1", "APPLIED", acked_at=T0)], T0)
    assert record["notify_email"] is None
    assert record["notify_postal_address"] == ADDRESS


def test_an_opt_in_is_confirmed_as_an_opt_in_and_a_phone_only_person_by_text() -> None:
    opted_in = replace(request(email=None), action="OPT_IN", phone="+15555550100")
    record = confirmation_record(opted_in, [row("c1", "APPLIED", acked_at=T0)], T0)
    assert record["action"] == "OPT_IN"
    assert record["notify_phone"] == "+15555550100"
    with_email = confirmation_record(
        replace(request(), phone="+15555550100"), [row("c1", "APPLIED", acked_at=T0)], T0
    )
    assert with_email["action"] == "OPT_OUT" and with_email["notify_phone"] is None


def test_no_confirmation_claims_success_for_an_unapplied_destination() -> None:
    for status in ("PENDING", "REJECTED"):
        with pytest.raises(ValueError, match="has not applied"):
            confirmation_record(
                request(), [row("c1", "APPLIED", acked_at=T0), row("c2", status, "mail_house", T0)], T0
            )


# --- decoding acks ---------------------------------------------------------------------
def _ack_record(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "command_id": "c1",
        "request_id": "evt-1",
        "destination": "email_provider",
        "status": "REJECTED",
        "detail": "bounced",
        "acked_at": T0,
    }
    values.update(overrides)
    return values


def test_decode_ack_round_trips_through_the_codec() -> None:
    codec = default_codec()
    decoded = decode_ack(codec, codec.encode("SuppressionAck", _ack_record()))
    assert decoded == Ack("c1", "evt-1", "email_provider", REJECTED, "bounced", T0)
    with pytest.raises(PoisonMessage) as info:
        decode_ack(
            codec,
            codec.encode(
                "OptOutConfirmed", confirmation_record(request(), [row("c1", "APPLIED", acked_at=T0)], T0)
            ),
        )
    assert info.value.reason == "wrong_message_type"


@pytest.mark.parametrize(
    "overrides", [{"command_id": " "}, {"detail": "nul\x00"}, {"acked_at": 5}, {"status": "MAYBE"}]
)
def test_malformed_acks_are_poison(overrides: dict[str, object]) -> None:
    with pytest.raises(PoisonMessage) as info:
        ack_from_record(_ack_record(**overrides))
    assert info.value.reason == "invalid_ack"


# --- the sweeper's schedule ------------------------------------------------------------
def test_reissue_interval_doubles_per_send_up_to_the_cap() -> None:
    got = [reissue_interval(n, 60, 600).total_seconds() for n in range(1, 8)]
    assert got == [60, 120, 240, 480, 600, 600, 600]
    assert reissue_interval(10_000, 60, 600) == timedelta(seconds=600)  # no overflow
    assert reissue_interval(0, 60, 600) == timedelta(seconds=60)


def test_an_unacked_command_becomes_due_after_a_growing_wait_on_a_manual_clock() -> None:
    clock = ManualClock(T0)
    issued, count = clock.now(), 1
    sends = []
    for _ in range(4):
        due = next_reissue_at(issued, count, 60, 300)
        clock.advance(due - clock.now() - timedelta(seconds=1))
        assert clock.now() < due  # one second early: not yet
        clock.advance(timedelta(seconds=1))
        assert clock.now() >= due
        sends.append((clock.now() - issued).total_seconds())
        issued, count = clock.now(), count + 1
    assert sends == [60, 120, 240, 300]


def test_sweep_schedule_runs_first_at_once_then_every_interval() -> None:
    clock = ManualClock(T0)
    schedule = SweepSchedule(clock, every_seconds=30)
    assert schedule.due()
    schedule.done(more_waiting=False)
    assert not schedule.due()
    clock.advance(timedelta(seconds=29))
    assert not schedule.due()
    clock.advance(timedelta(seconds=1))
    assert schedule.due()
    schedule.done(more_waiting=True)  # a full batch: continue at the next poll
    assert schedule.due()


# --- overdue ---------------------------------------------------------------------------
def test_describe_lateness() -> None:
    assert describe_lateness(T0, T0 + timedelta(days=2, hours=3, minutes=5)) == "overdue 2d 3h"
    assert describe_lateness(T0, T0 - timedelta(hours=5, minutes=10)) == "due in 5h 10m"
    assert describe_lateness(T0, T0 + timedelta(minutes=7)) == "overdue 7m"


def test_overdue_table_and_json() -> None:
    item = OverdueRequest(
        "evt-1",
        "NEEDS_ATTENTION",
        "US-CA",
        "CCPA",
        T0 - timedelta(days=30),
        T0 - timedelta(hours=2),
        T0 - timedelta(hours=1),
        ("mail_house:REJECTED",),
    )
    soon = OverdueRequest(
        "evt-2", "PENDING", None, "default", T0, T0 + timedelta(hours=3), None, ("email_provider:PENDING",)
    )
    table = render_table([item, soon], T0).splitlines()
    assert table[0].startswith("EVENT ID")
    assert "overdue 2h 0m" in table[1] and "mail_house:REJECTED" in table[1]
    assert "due in 3h 0m" in table[2]
    data = item.as_json(T0)
    assert data["overdue"] is True and data["seconds_past_due"] == 7200
    assert soon.as_json(T0)["overdue"] is False
