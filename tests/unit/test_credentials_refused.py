"""A destination that refuses our credentials (issue #11): the kit's ``CredentialsWatch``
sets the gauge, logs once per change (never per retry) and makes ``/readyz`` not ready
while ``/healthz`` stays alive. The loop side (paused, in the group, retried every
``retry_after``) is the consume loop's own, tested in test_consumer_loop.py."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.common.errors import RetriableError
from services.connectors.kit import CredentialsRefused, CredentialsWatch, IncompleteBatch, Outcome
from services.observability.health import HealthState
from tests.support.logcapture import capture_all_logs


def gauge(destination: str) -> float | None:
    return REGISTRY.get_sample_value("optout_connector_credentials_refused", {"destination": destination})


@pytest.mark.expected_errors("destination refuses our credentials")
def test_refusal_sets_the_gauge_and_logs_once_until_a_call_works() -> None:
    watch = CredentialsWatch("sendgrid_a")
    assert gauge("sendgrid_a") == 0.0 and watch.readiness() is None
    refused = CredentialsRefused("SendGrid answered HTTP 401: check its credentials", retry_after=30.0)

    with capture_all_logs() as logs:
        watch.observe(refused, got_answers=False)
        watch.observe(IncompleteBatch([], refused), got_answers=False)  # a chunk's refusal too
        watch.observe(RetriableError("SendGrid answered HTTP 503"), got_answers=False)  # proves nothing
        watch.observe(refused, got_answers=False)
        assert gauge("sendgrid_a") == 1.0 and watch.refused
        assert "credentials refused" in (watch.readiness() or "")
        watch.observe(None, got_answers=True)
        watch.observe(None, got_answers=True)

    assert [(e["log_level"], e["event"].split(";")[0]) for e in logs] == [
        ("error", "destination refuses our credentials"),
        ("info", "destination accepts our credentials again"),
    ]
    assert gauge("sendgrid_a") == 0.0 and watch.readiness() is None and not watch.refused


def test_a_partial_success_clears_the_refusal() -> None:
    watch = CredentialsWatch("mailgun_b")
    with capture_all_logs():
        watch.observe(CredentialsRefused("401", retry_after=1.0), got_answers=False)
        watch.observe(IncompleteBatch([Outcome.applied("c1")], RetriableError("503")), got_answers=True)
    assert gauge("mailgun_b") == 0.0 and watch.readiness() is None


def test_readiness_fails_while_liveness_holds() -> None:
    now = [100.0]
    health = HealthState(monotonic=lambda: now[0])
    watch = CredentialsWatch("sendgrid_c")
    health.add_check("credentials:sendgrid_c", watch.readiness)
    health.register_loop("connector.sendgrid_c[g]", max_silence=5.0)
    health.beat("connector.sendgrid_c[g]")
    with capture_all_logs():
        watch.observe(CredentialsRefused("SendGrid answered HTTP 403", retry_after=30.0), got_answers=False)

    ready, body = health.readiness()
    live, _ = health.liveness()
    assert live and not ready
    assert body["checks"]["credentials:sendgrid_c"] == {
        "ok": False,
        "reason": "credentials refused: SendGrid answered HTTP 403",
    }
    with capture_all_logs():
        watch.observe(None, got_answers=True)
    assert health.readiness()[0]
