"""Heaviest tests first (a pytest plugin, loaded by tests/conftest.py).

pytest-xdist hands tests to its workers in collection order, and pytest-randomly shuffles
that order. A minute-long fault run or whole-pipeline test drawn last then runs alone at the
end while the other workers idle: on 2026-12-02 a fresh-clone `make test` ended with the
5,000-opt-out e2e test at 97%. Ordering the tiers (fault runs and e2e tests, then integration
tests, then unit tests) keeps the random order within each tier and fills the end of the run
with short unit tests instead (longest-processing-time-first scheduling)."""

from __future__ import annotations

import pytest

_TIERS = {"faults": 0, "e2e": 0, "integration": 1}


def tier(item: pytest.Item) -> int:
    """0 for tests/faults and tests/e2e, 1 for tests/integration, 2 for the rest."""
    parts = item.path.parts
    return min((t for folder, t in _TIERS.items() if folder in parts), default=2)


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle (tryfirst), which it keeps
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=tier)  # stable: the shuffled order stays within each tier
