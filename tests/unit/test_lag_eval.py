"""Lag arithmetic and the Burrow-style evaluator, on hand-built windows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.observability.group_lag import GroupOffsets, evaluate_group
from services.observability.lag import (
    CommitSample,
    PartitionWindow,
    Status,
    burrow_group_status,
    evaluate_partition,
    lag_seconds,
    message_lag,
    worst,
)


def window(*rows: tuple[int, int, float]) -> list[CommitSample]:
    """(offset, lag, timestamp) rows, oldest first."""
    return [CommitSample(o, lag, t) for o, lag, t in rows]


# --- message lag / seconds ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("committed", "end", "start", "expected"),
    [
        (10, 15, 0, 5),
        (15, 15, 0, 0),
        (None, 15, 0, 15),  # nothing committed: everything from the low watermark
        (None, 15, 5, 10),
        (-1001, 15, 5, 10),  # librdkafka's "no offset"
        (2, 15, 5, 10),  # committed offset deleted by retention
        (20, 15, 0, 0),  # never negative
        (3, -1001, 0, 0),  # unknown end
    ],
)
def test_message_lag(committed: int | None, end: int, start: int, expected: int) -> None:
    assert message_lag(committed, end, start) == expected


def test_lag_seconds_is_the_age_of_the_oldest_unconsumed_message() -> None:
    assert lag_seconds(now_ms=100_000, oldest_unconsumed_ms=40_000, lag=3) == 60.0
    assert lag_seconds(now_ms=100_000, oldest_unconsumed_ms=40_000, lag=0) == 0.0
    assert lag_seconds(now_ms=100_000, oldest_unconsumed_ms=None, lag=3) is None
    # A producer clock ahead of ours never yields a negative age.
    assert lag_seconds(now_ms=100_000, oldest_unconsumed_ms=130_000, lag=1) == 0.0


# --- Burrow rules ------------------------------------------------------------------------------
def test_ok_when_lag_was_zero_anywhere_in_the_window() -> None:
    w = window((100, 5, 0), (105, 0, 60), (105, 8, 120))
    assert evaluate_partition(w, current_lag=20, now=130) is Status.OK


def test_stop_even_if_lag_was_zero_in_an_old_window() -> None:
    # Current Burrow checks STOP first: the zero-lag commit may be hours old.
    w = window((100, 5, 0), (105, 0, 60), (105, 8, 120))
    assert evaluate_partition(w, current_lag=20, now=10_000) is Status.STOP


def test_a_recent_end_offset_the_consumer_had_reached_delays_stop() -> None:
    w = window((100, 5, 0), (110, 3, 60))
    assert evaluate_partition(w, 4, now=500, recent_ends=[110, 112, 114]) is Status.OK
    assert evaluate_partition(w, 4, now=500, recent_ends=[112, 114]) is Status.STOP


def test_ok_when_current_lag_is_zero_even_if_stopped_long_ago() -> None:
    w = window((100, 5, 0), (105, 5, 60))
    assert evaluate_partition(w, current_lag=0, now=10_000) is Status.OK


def test_ok_when_lag_decreases_somewhere() -> None:
    w = window((100, 50, 0), (110, 60, 60), (130, 40, 120), (140, 45, 180))
    assert evaluate_partition(w, current_lag=45, now=200) is Status.OK


def test_warn_when_offsets_advance_but_lag_never_decreases() -> None:
    w = window((100, 10, 0), (105, 15, 60), (110, 15, 120), (115, 22, 180))
    assert evaluate_partition(w, current_lag=25, now=200) is Status.WARN


def test_stop_when_no_commit_for_longer_than_the_window_spans() -> None:
    w = window((100, 10, 0), (105, 9, 60), (110, 8, 120))  # spans 120 s
    assert evaluate_partition(w, current_lag=30, now=240) is Status.OK  # 120 s since: not yet
    assert evaluate_partition(w, current_lag=30, now=241) is Status.STOP


def test_stop_is_not_applied_while_a_live_member_owns_the_partition() -> None:
    w = window((100, 10, 0), (105, 15, 60))
    assert evaluate_partition(w, current_lag=30, now=1_000) is Status.STOP
    assert evaluate_partition(w, current_lag=30, now=1_000, owner_alive=True) is Status.WARN


def test_stall_when_committing_the_same_offset_with_lag() -> None:
    w = window((100, 10, 0), (100, 12, 60), (100, 20, 120))
    assert evaluate_partition(w, current_lag=20, now=130) is Status.STALL


def test_rewind_when_an_offset_goes_backwards_and_it_beats_every_other_rule() -> None:
    w = window((100, 10, 0), (90, 20, 60), (90, 25, 120))  # also stalled-ish and stopped
    assert evaluate_partition(w, current_lag=25, now=10_000) is Status.REWIND


def test_rewind_after_zero_lag_is_reported_until_the_consumer_is_back_where_it_was() -> None:
    # Burrow PR #716: a reset to an old offset after a zero-lag period is still a REWIND.
    w = window((100, 0, 0), (120, 0, 60), (20, 100, 70))
    assert evaluate_partition(w, current_lag=100, now=71) is Status.REWIND
    recovered = [*w, CommitSample(121, 2, 80)]
    assert evaluate_partition(recovered, current_lag=2, now=81) is Status.OK


def test_stop_beats_stall_and_warn() -> None:
    w = window((100, 10, 0), (100, 12, 60))
    assert evaluate_partition(w, current_lag=12, now=500) is Status.STOP


def test_a_single_commit_has_no_trend() -> None:
    w = window((100, 10, 50))
    assert evaluate_partition(w, current_lag=10, now=50) is Status.OK
    assert evaluate_partition(w, current_lag=10, now=51) is Status.STOP  # stopped since
    assert evaluate_partition([], current_lag=10, now=51) is Status.OK


def test_group_status_is_the_worst_partition_and_burrow_folds_errors_into_err() -> None:
    assert worst([Status.OK, Status.WARN, Status.OK]) is Status.WARN
    assert worst([Status.WARN, Status.STALL, Status.STOP]) is Status.STALL
    assert worst([]) is Status.OK
    assert burrow_group_status(Status.STOP) is Status.ERR
    assert burrow_group_status(Status.REWIND) is Status.ERR
    assert burrow_group_status(Status.WARN) is Status.WARN


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 10**6)), min_size=1, max_size=12),
    st.integers(1, 10**6),
)
def test_a_recent_window_with_a_zero_lag_commit_and_no_rewind_is_ok(
    rows: list[tuple[int, int]], current: int
) -> None:
    offsets = sorted(o for o, _ in rows)
    lags = [lag for _, lag in rows]
    samples = [CommitSample(o, lag, float(i)) for i, (o, lag) in enumerate(zip(offsets, lags, strict=True))]
    middle = len(samples) // 2
    samples[middle] = CommitSample(samples[middle].offset, 0, samples[middle].timestamp)
    assert evaluate_partition(samples, current, now=samples[-1].timestamp) is Status.OK


# --- the observation window ---------------------------------------------------------------------
def test_window_counts_new_offsets_and_keeps_only_the_last_n() -> None:
    w = PartitionWindow(size=3)
    for i in range(5):
        assert w.observe(offset=100 + i, lag=1, now=float(i), owned=True)
    assert [s.offset for s in w.samples] == [102, 103, 104]


def test_unowned_unchanged_offset_is_no_commit_so_a_stopped_consumer_turns_stop() -> None:
    w = PartitionWindow()
    assert w.observe(100, 5, now=0.0, owned=True)
    assert w.observe(110, 5, now=10.0, owned=True)
    assert w.evaluate(5, now=10.0) is Status.WARN  # lag not decreasing while it commits
    # The consumer stops; lag rises; the offset stays.
    assert not w.observe(110, 9, now=15.0, owned=False)
    assert w.evaluate(9, now=15.0) is Status.WARN  # 5 s since last commit < 10 s span
    assert not w.observe(110, 14, now=21.0, owned=False)
    assert w.evaluate(14, now=21.0) is Status.STOP  # 11 s > 10 s span
    # Restarted: catches up to zero lag.
    assert w.observe(125, 0, now=25.0, owned=True)
    assert w.evaluate(0, now=25.0) is Status.OK


def test_owned_unchanged_offset_repeats_only_after_repeat_after_then_stalls() -> None:
    w = PartitionWindow(repeat_after=30.0)
    assert w.observe(100, 5, now=0.0, owned=True)
    assert not w.observe(100, 6, now=10.0, owned=True)
    assert w.evaluate(6, now=10.0) is Status.OK  # one commit: no trend, owner alive: not STOP
    assert w.observe(100, 8, now=30.0, owned=True)
    assert w.evaluate(8, now=30.0) is Status.STALL


def test_rewound_offsets_are_reported() -> None:
    w = PartitionWindow()
    w.observe(100, 5, 0.0, owned=True)
    w.observe(40, 65, 5.0, owned=True)
    assert w.evaluate(65, now=6.0) is Status.REWIND


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PartitionWindow(size=0)


def test_evaluate_group_builds_partition_reports_and_worst_status() -> None:
    windows: dict[tuple[str, str, int], PartitionWindow] = {}
    raw = GroupOffsets(
        group="g",
        state="EMPTY",
        members=0,
        committed={("t", 0): 10, ("t", 1): None, ("t", 2): 7},
        start={("t", 0): 0, ("t", 1): 3, ("t", 2): 0},
        end={("t", 0): 10, ("t", 1): 8, ("t", 2): 9},
    )
    first = evaluate_group(raw, windows, now=100.0, stamps={("t", 1): 40_000, ("t", 2): 95_000})
    by_partition = {p.partition: p for p in first.partitions}
    assert (by_partition[0].lag, by_partition[1].lag, by_partition[2].lag) == (0, 5, 2)
    assert by_partition[1].committed is None
    assert by_partition[1].lag_seconds == 60.0 and by_partition[2].lag_seconds == 5.0
    assert by_partition[0].lag_seconds == 0.0
    assert first.status is Status.OK and first.total_lag == 7 and first.max_lag_seconds == 60.0
    # Nothing moves for 5 s and nobody owns the partitions: the lagging ones stop.
    later = evaluate_group(raw, windows, now=105.0, stamps={})
    statuses = {p.partition: p.status for p in later.partitions}
    assert statuses == {0: Status.OK, 1: Status.STOP, 2: Status.STOP}
    assert later.status is Status.STOP and later.burrow_status is Status.ERR
    assert later.to_json()["partitions"][1]["status"] == "STOP"
