"""One closing line for the two pytest passes of ``make test``: the counts of every JUnit XML
report given, e.g. ``tests: 493 passed, 0 failed, 0 skipped``.

``python -m tests.support.summary test-output/*.xml``
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def counts(paths: list[Path]) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in paths:
        for suite in ET.parse(path).getroot().iter("testsuite"):
            tests = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            total["passed"] += tests - failed - skipped
            total["failed"] += failed
            total["skipped"] += skipped
    return total


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv if Path(a).is_file()]
    total = counts(paths)
    sys.stdout.write(
        f"tests: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
