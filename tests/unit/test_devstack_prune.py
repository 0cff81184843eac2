"""``python -m services.devstack prune``: which topics count as left by test and benchmark runs."""

import pytest

from services.devstack import StackError
from services.devstack.prune import left_by_runs, prune
from tests.support.stack_info import stack_info


def test_only_run_prefixes_are_left_by_runs() -> None:
    topics = [
        "t0123456789.optout.requests",  # a test's isolated_settings
        "f7cba70a9.optout.acks",  # a fault run or bench-e2e
        "bench1a2b3c4d.intake.optout.requests",  # bench-intake
        "optout.requests",  # the pipeline's own
        "__consumer_offsets",
        "team.optout.requests",  # a prefix someone chose
        "t01234.optout.requests",  # too short for a run's prefix
        "fXYZ45678.optout.acks",  # not hex
        "F7cba70a9.optout.acks",
    ]
    assert left_by_runs(topics) == [
        "bench1a2b3c4d.intake.optout.requests",
        "f7cba70a9.optout.acks",
        "t0123456789.optout.requests",
    ]


def test_a_broker_that_is_not_ours_is_left_alone() -> None:
    external = stack_info(0)
    with pytest.raises(StackError, match="not ours"):
        prune(external)
