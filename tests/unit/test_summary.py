"""The closing line of `make test` adds up both pytest passes."""

from __future__ import annotations

from pathlib import Path

from tests.support.summary import counts

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="{errors}" failures="{failures}" skipped="{skipped}"
 tests="{tests}" time="1.0"></testsuite></testsuites>"""


def test_counts_add_up_every_report(tmp_path: Path) -> None:
    first = tmp_path / "parallel.xml"
    first.write_text(REPORT.format(errors=1, failures=2, skipped=3, tests=100))
    second = tmp_path / "serial.xml"
    second.write_text(REPORT.format(errors=0, failures=0, skipped=0, tests=1))
    total = counts([first, second])
    assert (total["passed"], total["failed"], total["skipped"]) == (95, 3, 3)
