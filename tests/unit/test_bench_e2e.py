"""The figures of ``benchmarks/bench_e2e.py``: percentiles, per-slice p99, the sustained rule."""

import argparse

import pytest

from benchmarks.bench_e2e import (
    NO_OFFSET,
    BatchFit,
    MissingFacts,
    PhaseResult,
    RequestsPartition,
    batch_fit,
    fit_lines,
    fit_point,
    missing_lines,
    missing_verdict,
    parse_args,
    parse_role_env,
    percentile,
    role_env,
)


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) != percentile([], 99)  # nan


def test_p99_per_slice_groups_by_publish_time():
    result = PhaseResult("p", 10, 30)
    result.samples = [(1_000 + i * 100, 10.0) for i in range(100)]  # 0..9.9 s: 10 ms
    result.samples += [(11_000 + i * 100, 500.0) for i in range(100)]  # 10..19.9 s: 500 ms
    assert result.slices(10) == [(0, 10.0), (10, 500.0)]


def _phase(published: int, confirmed: int, span: float, latency: float) -> PhaseResult:
    result = PhaseResult("step", rate=100, seconds=10, published=published, publish_seconds=10.0)
    result.confirmed = confirmed
    result.confirmation_span_s = span
    result.latencies_ms = [latency] * confirmed
    return result


def test_a_step_is_sustained_only_when_it_keeps_up():
    assert _phase(1000, 1000, 10.2, 300.0).sustained(5000) == (True, "sustained")
    missing = _phase(1000, 990, 10.2, 300.0).sustained(5000)
    assert not missing[0] and "10 not confirmed" in missing[1]
    slow = _phase(1000, 1000, 10.2, 6000.0).sustained(5000)
    assert not slow[0] and "p99" in slow[1]
    behind = _phase(1000, 1000, 14.0, 300.0).sustained(5000)  # 71/s confirmed for 100/s sent
    assert not behind[0] and "confirmations/s" in behind[1]


def test_time_per_hop_from_each_hops_create_time():
    from benchmarks.bench_e2e import Hops, add_stages

    stages: dict[str, list[float]] = {}
    hops = Hops(commands={"email": 1_030, "mail": 1_040}, acks={"email": 1_090, "mail": 1_200})
    add_stages(stages, requested=1_000, hops=hops, confirmed=1_260)
    assert stages == {
        "intake": [40.0],  # request -> last command
        "connectors": [160.0],  # last command -> last ack
        "confirmer": [60.0],  # last ack -> confirmation
        "  email": [60.0],
        "  mail": [160.0],
    }


def test_refine_halves_the_gap_to_25_per_second_until_50_apart() -> None:
    from benchmarks.bench_e2e import refine_rate

    assert refine_rate(2000, 2500) == 2250
    assert refine_rate(2250, 2500) == 2375
    assert refine_rate(2000, 2250) == 2125
    assert refine_rate(0, 500) == 250
    assert refine_rate(2125, 2175) is None
    assert refine_rate(2000, 2000) is None


def test_ack_destination_reads_what_the_codec_reads() -> None:
    from datetime import UTC, datetime

    from benchmarks.bench_e2e import ack_destination
    from services.common.avro import default_codec

    codec = default_codec()
    for destination in ("email_provider", "mail_house", "é" * 70, ""):
        payload = codec.encode(
            "SuppressionAck",
            {
                "command_id": "c" * 200,
                "request_id": "r-1",
                "destination": destination,
                "status": "APPLIED",
                "detail": None,
                "acked_at": datetime(2026, 12, 1, tzinfo=UTC),
            },
        )
        assert ack_destination(payload) == codec.decode(payload)[1]["destination"] == destination
        assert ack_destination(payload[: -12 - len(destination.encode())]) is None
    assert ack_destination(b"") is None
    assert ack_destination(b"not avro at all") is None


def _facts() -> MissingFacts:
    """Four requests not confirmed, each in a different place."""
    return MissingFacts(
        missing=["skipped", "pending", "never-written", "recorded"],
        partitions=[
            RequestsPartition(0, low=0, high=34, committed=34, read=34),
            RequestsPartition(1, low=0, high=30, committed=NO_OFFSET, read=30),
        ],
        located={"skipped": (0, 33), "pending": (1, 29), "recorded": (0, 2)},
        recorded={"recorded": "PENDING"},
        intake_messages=62,
        intake_batches=1,
    )


def test_each_request_not_confirmed_is_placed() -> None:
    facts = _facts()
    assert "skipped" in missing_verdict(facts, "skipped")  # below the committed offset
    assert "committed offset 34" in missing_verdict(facts, "skipped")
    assert "not consumed" in missing_verdict(facts, "pending")  # the group committed nothing there
    assert "never written" in missing_verdict(facts, "never-written")
    assert "recorded by intake (state PENDING)" in missing_verdict(facts, "recorded")


def test_the_report_shows_watermarks_commits_and_offsets() -> None:
    lines = missing_lines(_facts())
    assert lines[0] == "4 not confirmed: skipped, pending, never-written, recorded"
    assert lines[1] == (
        "requests topic: 64 messages between the watermarks, 64 read back; "
        "intake logged 62 messages in 1 batches"
    )
    assert lines[2] == (
        "  [0] low 0 high 34 (34 messages, 34 read), intake committed 34, 0 behind: "
        "not confirmed here recorded@2, skipped@33"
    )
    assert lines[3] == (
        "  [1] low 0 high 30 (30 messages, 30 read), intake committed none: not confirmed here pending@29"
    )
    assert len(lines) == 4 + 4


def test_the_report_names_at_most_twenty_requests() -> None:
    facts = MissingFacts([f"id{i}" for i in range(25)], [])
    lines = missing_lines(facts)
    assert lines[0].endswith("id19 (and 5 more)")
    assert len([line for line in lines if line.startswith("  id")]) == 20


def test_requests_encoded_ahead_carry_the_time_they_are_sent():
    from benchmarks.bench_e2e import prepare_requests
    from services.common.avro import default_codec
    from services.common.clock import to_millis
    from services.common.settings import Settings

    codec = default_codec()
    prepared = prepare_requests(Settings(), codec, 300, seed=11)
    assert len({r.event_id for r in prepared}) == 300
    for when in (1_796_000_000_000, 1_796_000_000_001, 4_102_444_800_000):  # 2026, and 2100
        for request in prepared:
            _, record = codec.decode(request.payload(when), expect="OptOutRequested")
            assert to_millis(record["requested_at"]) == when
            assert str(record["event_id"]) == request.event_id
    # Everything but requested_at is what the generator made.
    _, first = codec.decode(prepared[0].payload(1_796_000_000_000))
    again = prepare_requests(Settings(), codec, 1, seed=11)[0]
    assert codec.decode(again.payload(1_796_000_000_000)) == ("OptOutRequested", first)


def test_a_role_setting_reaches_that_role_only() -> None:
    args = parse_args(
        [
            "--intake-interval-ms",
            "0",
            "--role-env",
            "intake:OPTOUT_KAFKA_FETCH_WAIT_MS=100",
            "--role-env",
            "confirmer:OPTOUT_KAFKA_FETCH_MIN_BYTES=1=2",
        ]
    )
    assert role_env(args) == {
        "intake": {"OPTOUT_BATCH_INTERVAL_MS": "0", "OPTOUT_KAFKA_FETCH_WAIT_MS": "100"},
        "confirmer": {"OPTOUT_KAFKA_FETCH_MIN_BYTES": "1=2"},
    }


@pytest.mark.parametrize(
    "text", ["OPTOUT_X=1", "web:OPTOUT_X=1", "intake:OPTOUT_X", "intake:KAFKA_X=1", "intake:=1"]
)
def test_a_malformed_role_setting_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="ROLE:OPTOUT_NAME=VALUE"):
        parse_role_env(text)


def _fit_phase(rate: float, confirmed: int, batches: dict[str, int], cpu_seconds: float) -> PhaseResult:
    result = PhaseResult(f"step {rate:,.0f}/s", rate, 20.0)
    result.confirmed = confirmed
    result.batches = {name: (count, count * 10) for name, count in batches.items()}
    result.cpu_seconds = cpu_seconds
    return result


def test_the_batch_fit_splits_cpu_into_per_opt_out_and_per_batch():
    # 0.3 ms per opt-out + 5 ms per batch, exactly: the fit finds both
    points = [(n / 1000, 0.3 + 5.0 * n / 1000) for n in (125, 60, 30, 6)]
    fit = batch_fit(points)
    assert fit is not None
    assert fit.per_event_ms == pytest.approx(0.3)
    assert fit.per_batch_ms == pytest.approx(5.0)
    assert fit.phases == 4
    assert batch_fit(points[:2]) is None  # too few to tell
    assert batch_fit([(0.1, 1.0), (0.1, 1.1), (0.1, 0.9)]) is None  # the batches never varied


def test_the_fit_lines_say_what_the_cpu_target_needs():
    steady = _fit_phase(500, 1000, {"intake": 20, "confirmer": 20, "connector.a": 85}, cpu_seconds=0.925)
    assert fit_point(steady) == pytest.approx((0.125, 0.925))
    lines = fit_lines(batch_fit([(0.125, 0.925), (0.06, 0.6), (0.006, 0.33)]), steady)
    assert "at 500/s, 125 batches per 1,000 opt-outs" in lines[0]
    assert "(measured 0.93)" in lines[0]
    # room below the target: 0.4733 - 0.3 = 0.173 ms per opt-out; at 0.125 batches per opt-out
    # a batch may cost 1.39 ms (28% of 5 ms), or at 5 ms there may be 35 per 1,000
    assert "a batch at 1.39 ms or less (28% of now)" in lines[1]
    assert "35 batches per 1,000 opt-outs or fewer" in lines[1]
    over = fit_lines(BatchFit(0.5, 5.0, 3), steady)
    assert over[1].strip() == "the per-opt-out part alone is above the target 0.47 ms"
    assert fit_lines(None, steady) == []
    flat = fit_lines(BatchFit(0.3, -0.5, 3), steady)
    assert flat[1].strip() == "no cost per batch found: the batches' count does not explain the CPU"
    assert fit_lines(BatchFit(0.3, 5.0, 3), _fit_phase(500, 1000, {}, cpu_seconds=0.9)) == []
