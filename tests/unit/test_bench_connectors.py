"""The pure helpers of benchmarks/bench_connectors.py: batching, the share and verdict of a
kind, the report's lines and the outcome check."""

from __future__ import annotations

import pytest

from benchmarks.bench_connectors import (
    KindResult,
    check_outcomes,
    chunks,
    email,
    format_results,
    make_commands,
)
from services.connectors.kit import Awaiting, Outcome


def test_chunks_cover_every_command_in_order_in_batches_of_at_most_size() -> None:
    commands = make_commands(7, "sendgrid", email)
    parts = list(chunks(commands, 3))
    assert [len(p) for p in parts] == [3, 3, 1]
    assert [c for p in parts for c in p] == commands
    assert len({c.email for c in commands}) == 7 and {c.destination for c in commands} == {"sendgrid"}


def test_share_is_connector_rate_over_ceiling_rate_and_passes_at_half() -> None:
    half = KindResult("sendgrid", 1000, 1000, 1, connector_seconds=2.0, ceiling_seconds=1.0)
    below = KindResult("mailgun", 1000, 1000, 1, connector_seconds=2.5, ceiling_seconds=1.0)
    assert (half.connector_rate, half.ceiling_rate, half.share, half.passed) == (500, 1000, 0.5, True)
    assert below.share == pytest.approx(0.4) and not below.passed


def test_the_report_has_one_line_per_kind_with_rates_share_and_verdict() -> None:
    lines = format_results(
        [
            KindResult("sendgrid", 20_000, 1000, 20, 0.5, 0.25, step_rate=12_345.4),
            KindResult("ses", 2_000, 1, 2_000, 10.0, 2.0, "4 threads"),
        ]
    )
    assert len(lines) == 4 and "connector/s" in lines[0]
    assert "40,000" in lines[2] and "80,000" in lines[2] and "50%" in lines[2] and "PASS" in lines[2]
    assert "12,345" in lines[2] and "step/s" in lines[0] and " - " in lines[3]
    assert "20%" in lines[3] and "FAIL" in lines[3] and lines[3].endswith("4 threads")


def test_check_outcomes_counts_applied_and_handed_over_commands_only() -> None:
    commands = make_commands(3, "x", email)
    results = [
        Outcome.applied(commands[0].command_id),
        Awaiting(commands[1].command_id),
        Outcome.rejected(commands[2].command_id, "no"),
    ]
    check_outcomes("x", results[:2], 2)
    with pytest.raises(RuntimeError, match="2/3"):
        check_outcomes("x", results, 3)
