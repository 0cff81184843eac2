"""The whole pipeline as separate processes (intake, confirmer, three connectors, stand-ins)
on the real broker and database: the downstream issue's "done when"."""

from dataclasses import replace
from pathlib import Path

import pytest

from tests.faults.run_faults import FaultPlan, run
from tests.support.logcapture import CAPTURE, json_log_errors

# Whole pipelines of processes are CPU-heavy: one at a time (pytest-xdist runs this group on
# one worker), while the other workers run the lighter tests.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("pipeline-processes")]


@pytest.fixture(autouse=True)
def _service_logs_count(tmp_path: Path) -> None:
    """No faults are injected here: an error line in any service's log fails the test."""
    CAPTURE.watch(lambda: json_log_errors("pipeline", sorted(tmp_path.glob("**/*.log"))))


def test_a_thousand_opt_outs_confirmed_exactly_once(stack, tmp_path: Path):
    report = run(FaultPlan.calm(events=1_000), tmp_path)
    print(report.table())
    fig = report.figures
    assert fig["requests confirmed (distinct)"] == 1_000
    assert fig["confirmations naming wrong destinations"] == 0
    assert fig["unexpected commands"] == 0
    assert fig["duplicate command messages"] == 0 and fig["duplicate confirmations"] == 0
    assert report.ok, report.table()


def test_transient_failures_and_permanent_rejections_the_rest_confirms_once(stack, tmp_path: Path):
    """The email provider fails 30% of calls transiently and refuses 5% of requests for good
    (one run for both, to keep the suite short): every refused request needs attention and is
    never confirmed; every other one is confirmed exactly once."""
    plan = replace(FaultPlan.calm(events=1_000), standin_failure_rate=0.3, rejected_share=0.05)
    report = run(plan, tmp_path)
    print(report.table())
    fig = report.figures
    assert fig["requests needing attention"] > 0
    assert fig["confirmations for refused requests"] == 0
    assert fig["requests confirmed (distinct)"] == fig["requests to confirm"] < 1_000
    assert fig["duplicate confirmations"] == 0
    assert report.ok, report.table()
