"""A provider's long Retry-After must not cost the connector its place in the consumer
group: while the batch waits, the consumer keeps polling (paused), /healthz stays green
and no partition is revoked or lost (issue #10, pipeline: connector retries block the
consume loop). Real broker and database; max.poll.interval.ms is set to its minimum
(10 s) and the provider asks for 12 s."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.common.errors import RetriableError
from services.connectors.kit import Command, Connector, Outcome, run_connector, service_name
from services.observability.health import HEALTH
from tests.integration.test_connectors import acks_by_command, commands, publish
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration

RETRY_AFTER = 12.0  # > max.poll.interval.ms (10 s) and > the liveness limit (5 s)


class RateLimitedOnce(Connector):
    """Answers its first call like a provider's 429 with Retry-After, then applies."""

    destination = "email_provider"

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[str]]] = []
        self.lock = threading.Lock()

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        with self.lock:
            self.calls.append((time.monotonic(), [c.command_id for c in commands]))
            if len(self.calls) == 1:
                raise RetriableError("HTTP 429", retry_after=RETRY_AFTER)
        return [Outcome.applied(c.command_id) for c in commands]


def _rebalances(service: str) -> dict[str, float]:
    return {
        kind: REGISTRY.get_sample_value("optout_rebalances_total", {"service": service, "kind": kind}) or 0.0
        for kind in ("assigned", "revoked", "lost")
    }


def test_a_long_retry_after_keeps_the_consumer_in_its_group(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(
        base_settings,
        max_poll_interval_ms=10_000,
        connector_retry_after_max_seconds=60.0,
        connector_retry_initial_seconds=0.05,
        connector_retry_max_backoff_seconds=0.5,
    )
    service = service_name("email_provider")
    loop_name = f"{service}[{cfg.group(service)}]"
    batch = commands("email_provider", 5)
    connector = RateLimitedOnce()
    before = _rebalances(service)
    silences: list[float] = []

    def main(settings: Any, stop: threading.Event) -> None:
        run_connector(settings, connector, stop)

    publish(cfg, "email_provider", batch)

    def retried() -> bool:
        # Sampled like a liveness probe, every 0.2 s until the second apply() call.
        loop = HEALTH.liveness()[1]["loops"].get(loop_name)
        if loop is not None:
            silences.append(loop["seconds_since_poll"])
        return len(connector.calls) >= 2

    with running(main, cfg, "email_provider"):
        wait_until(retried, timeout=90, interval=0.2, message="the retried apply() call")
        acks = read_topic(cfg, cfg.acks_topic, expect=5, timeout=60)
        after = _rebalances(service)  # before stopping (closing the consumer revokes)

    applied = [cid for _, ids in connector.calls[1:] for cid in ids]
    assert sorted(applied) == sorted(c["command_id"] for c in batch)  # each once, after the 429
    assert set(connector.calls[0][1]) <= set(connector.calls[1][1])  # the failed ones came back first
    waited = connector.calls[1][0] - connector.calls[0][0]
    assert waited >= RETRY_AFTER - 0.5  # the provider's Retry-After was honoured
    assert set(acks_by_command(acks)) == {c["command_id"] for c in batch}
    assert silences, "the loop never registered for /healthz"
    assert max(silences) < 2.0, f"the loop stopped polling for {max(silences):.1f}s while waiting"
    assert after["revoked"] - before["revoked"] == 0 and after["lost"] - before["lost"] == 0, (before, after)
    assert after["assigned"] - before["assigned"] == 1, (before, after)
