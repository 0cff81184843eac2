"""The short fault-injection run, part of `make test` (the full one is `make test-faults`)."""

from pathlib import Path

import pytest

from tests.faults.run_faults import FaultPlan, run

# It stops and restarts the shared broker and database: never alongside other tests.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


@pytest.mark.timeout(600)
def test_short_fault_run_loses_nothing(stack, tmp_path: Path):
    report = run(FaultPlan.short(), tmp_path)
    print(report.table())
    assert report.faults["kill -9 intake"] >= 2
    assert report.figures["opt-outs published"] == 2_000
    assert report.ok, report.table()
