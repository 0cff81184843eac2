"""The short fault-injection run, part of `make test` (the full one is `make test-faults`)."""

from dataclasses import replace
from pathlib import Path

import pytest

from services.devstack import StackInfo
from tests.faults.environment import CONNECTORS
from tests.faults.own_stack import own_stack
from tests.faults.run_faults import FaultPlan, run

# It stops and restarts a broker and a database: its own (tests/faults/own_stack.py), so it
# runs beside the other tests; one fault run at a time (the cluster run shares the group).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("fault-runs")]


@pytest.mark.timeout(600)
def test_short_fault_run_loses_nothing(stack: StackInfo, tmp_path: Path) -> None:
    plan = FaultPlan.short()
    with own_stack(stack) as faulty:
        ours = faulty is not stack
        if not ours:  # a broker or database the user gave, shared with the tests beside this one
            plan = replace(plan, broker_restart=False, database_outage_seconds=0.0)
        report = run(plan, tmp_path, stack=faulty)
    print(report.table())
    assert report.faults["kill -9 intake"] >= 2
    assert report.figures["opt-outs published"] == 2_000
    if ours:  # the restarts happened, on the run's own servers
        assert report.faults["Kafka broker stop + restart"] == 1
        assert report.faults["PostgreSQL stopped for 6s"] == 1
    assert report.ok, report.table()
    # A passing run leaves nothing behind on the broker: its 14 topics are deleted.
    assert report.figures["topics deleted"] >= len(CONNECTORS) + 4, report.table()
