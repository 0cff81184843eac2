"""The ``sendgrid`` and ``mailgun`` kinds as real consume loops against the real broker and
database, talking HTTP to their stand-ins served on free ports (issue #11); and a
destination that refuses our credentials: paused, in its group, not ready, nothing
rejected or lost, resumed by itself once the key works."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from services.common.contract import Destination, Identifier, Scope
from services.common.kafka import create_topics
from services.common.settings import Settings
from services.connectors import mailgun, sendgrid
from services.connectors.kit import Connector, run_connector
from services.observability.health import HEALTH
from services.standins.mailgun_api import MailgunStandin
from services.standins.sendgrid_api import SendGridStandin
from services.standins.web import StandinServer
from tests.integration.test_connectors import FAST_RETRIES, acks_by_command, commands, publish, stored_rows
from tests.support.logcapture import CAPTURE
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration


def destination(name: str, kind: str, options: dict[str, Any], key: str) -> Destination:
    return Destination(
        id=name,
        scopes=frozenset({Scope.EMAIL_MARKETING}),
        identifiers=frozenset({Identifier.EMAIL}),
        requires_one_of=frozenset({Identifier.EMAIL}),
        kind=kind,
        options=options,
        credentials={"api_key": SecretStr(key)},
    )


def records_for(cfg: Settings, name: str, count: int) -> list[dict[str, Any]]:
    """Commands planned by intake's code for the email destination, addressed to ``name``."""
    create_topics(cfg, [cfg.suppress_topic(name), cfg.suppress_dlq_topic(name)])
    return [{**r, "destination": name} for r in commands("email_provider", count)]


def runner(connector: Connector) -> Any:
    def main(settings: Settings, stop: threading.Event) -> None:
        run_connector(settings, connector, stop)

    return main


def test_sendgrid_applies_once_and_rejects_only_the_refused_address(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(base_settings, **FAST_RETRIES)
    name = "sendgrid_it"
    batch = records_for(cfg, name, 12)
    bad = batch[5]["email"]
    standin = SendGridStandin(api_key="sg-it", rejected=[bad])
    with StandinServer(standin.handle, name="sendgrid") as server:
        connector = sendgrid.build(
            destination(name, "sendgrid", {"base_url": server.url, "group_id": 3}, "sg-it"), cfg
        )
        publish(cfg, name, batch)
        with running(runner(connector), cfg, name):
            acks = read_topic(cfg, cfg.acks_topic, expect=12)
            assert connector.read_back(batch[0]["email"]) is True

    grouped = acks_by_command(acks)
    assert set(grouped) == {r["command_id"] for r in batch} and len(acks) == 12
    statuses = {r["email"]: grouped[r["command_id"]][0]["status"] for r in batch}
    assert statuses.pop(bad) == "REJECTED" and set(statuses.values()) == {"APPLIED"}
    assert {a[0]["destination"] for a in grouped.values()} == {name}
    assert set(standin.suppressed) == set(statuses) and standin.groups[3] == set(statuses)
    assert stored_rows(cfg, name, list(grouped)) == 12


def test_mailgun_rides_out_429s_and_5xx_and_applies_once(base_settings: dict[str, Any]) -> None:
    import random

    cfg = isolated_settings(base_settings, batch_size=5, **FAST_RETRIES)
    name = "mailgun_it"
    batch = records_for(cfg, name, 20)
    standin = MailgunStandin(api_key="mg-it", rate_limit_per_second=3, failure_rate=0.2, rng=random.Random(4))
    with StandinServer(standin.handle, name="mailgun") as server:
        connector = mailgun.build(
            destination(name, "mailgun", {"domain": "mg.example.com", "base_url": server.url}, "mg-it"), cfg
        )
        publish(cfg, name, batch)
        with running(runner(connector), cfg, name):
            acks = read_topic(cfg, cfg.acks_topic, expect=20, timeout=90)
            standin.set_limits(failure_rate=0.0, rate_limit_per_second=0)  # a calm moment to reconcile
            listed = set(connector.list_unsubscribed(page_size=7))

    grouped = acks_by_command(acks)
    assert len(acks) == 20 and set(grouped) == {r["command_id"] for r in batch}
    assert {a[0]["status"] for a in grouped.values()} == {"APPLIED"}
    assert listed == {r["email"] for r in batch}
    assert Counter(standin.received.values()) == {1: 20}  # each address in one accepted request
    assert standin.answers[429] > 0 or standin.answers[500] + standin.answers[503] > 0, standin.answers


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("optout_connector_credentials_refused", {"destination": name})


def _credentials_check(name: str) -> dict[str, Any] | None:
    check: dict[str, Any] | None = HEALTH.readiness()[1]["checks"].get(f"credentials:{name}")
    return check


@pytest.mark.expected_errors("destination refuses our credentials")
def test_a_wrong_key_pauses_the_destination_until_the_key_is_fixed(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(
        base_settings,
        connector_credentials_check_seconds=0.3,
        connector_retry_initial_seconds=0.05,
        connector_retry_max_backoff_seconds=0.3,
    )
    name = "sendgrid_badkey"
    batch = records_for(cfg, name, 10)
    standin = SendGridStandin(api_key="the-new-key")
    with StandinServer(standin.handle, name="sendgrid") as server:
        connector = sendgrid.build(
            destination(name, "sendgrid", {"base_url": server.url}, "the-old-key"), cfg
        )
        publish(cfg, name, batch)
        with running(runner(connector), cfg, name):
            wait_until(lambda: _gauge(name) == 1.0, timeout=30, message="the credentials-refused gauge")
            wait_until(lambda: standin.answers[401] >= 3, timeout=30, message="checks every 0.3 s")
            check = _credentials_check(name)
            assert check is not None and check["ok"] is False
            assert "credentials refused" in check["reason"]
            loops = HEALTH.liveness()[1]["loops"]
            assert loops[f"connector.{name}[{cfg.group(f'connector.{name}')}]"]["ok"] is True  # alive
            assert read_topic(cfg, cfg.acks_topic) == []  # nothing acked, nothing rejected
            assert standin.suppressed == {}

            standin.set_api_key("the-old-key")  # the provider now accepts the key we hold
            acks = read_topic(cfg, cfg.acks_topic, expect=10)
            wait_until(lambda: _gauge(name) == 0.0, timeout=10, message="the gauge back to 0")
            check = _credentials_check(name)
            assert check is not None and check["ok"] is True

    grouped = acks_by_command(acks)
    assert len(acks) == 10 and set(grouped) == {r["command_id"] for r in batch}
    assert {a[0]["status"] for a in grouped.values()} == {"APPLIED"}
    assert Counter(standin.received.values()) == {1: 10}
    assert _credentials_check(name) is None  # the check leaves with the connector
    refusals = [e for e in CAPTURE.events if e.event.startswith("destination refuses our credentials")]
    assert len(refusals) == 1, refusals  # one line when it starts, not one per check


def test_optout_run_standins_serves_sendgrid_and_mailgun_on_their_ports(
    base_settings: dict[str, Any],
) -> None:
    import httpx

    from services.standins.server import run as run_standins
    from tests.support.pipeline import standin_ports

    ports = standin_ports()  # every stand-in on a free port (SES and the others start too)
    sg_port, mg_port = ports["standin_sendgrid_port"], ports["standin_mailgun_port"]
    cfg = Settings(
        **{
            **base_settings,
            **ports,
            "standin_sendgrid_port": sg_port,
            "standin_mailgun_port": mg_port,
            "standin_sendgrid_api_key": "sg-served",
            "standin_mailgun_api_key": "mg-served",
        }
    )

    def answered(url: str, **kwargs: Any) -> httpx.Response | None:
        try:
            return httpx.post(url, timeout=2, **kwargs)
        except httpx.TransportError:
            return None

    with running(run_standins, cfg, "standins"):
        sg_url = f"http://127.0.0.1:{sg_port}/v3/asm/suppressions/global"
        wait_until(lambda: answered(sg_url) is not None, timeout=10, message="the SendGrid stand-in")
        sg = answered(
            sg_url,
            json={"recipient_emails": ["a@example.com"]},
            headers={"Authorization": "Bearer sg-served"},
        )
        mg = answered(
            f"http://127.0.0.1:{mg_port}/v3/mg.example.com/unsubscribes",
            json=[{"address": "a@example.com", "tags": ["*"]}],
            auth=("api", "mg-served"),
        )
        refused = answered(sg_url, json={"recipient_emails": []}, headers={"Authorization": "Bearer nope"})
    assert sg is not None and (sg.status_code, sg.json()) == (201, {"recipient_emails": ["a@example.com"]})
    assert mg is not None and mg.status_code == 200 and "1 addresses" in mg.json()["message"]
    assert refused is not None and refused.status_code == 401
    assert refused.json() == {"errors": [{"field": None, "message": "authorization required"}]}
