"""Kafka security settings pass through to every client: the whole pipeline (intake,
three connectors, confirmer) runs against the local broker's SASL_PLAINTEXT listener."""

from __future__ import annotations

import json
import socket
import uuid
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.common.errors import ConfigurationError
from services.common.kafka import check_broker
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.devstack import KAFKA_SASL_MECHANISM, KAFKA_SASL_PASSWORD, KAFKA_SASL_USERNAME
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from services.standins.server import run as run_standins
from tests.support.pipeline import free_port, isolated_settings, read_topic, running, standin_ports

pytestmark = pytest.mark.integration


def test_pipeline_over_sasl(stack, base_settings, tmp_path):
    if not stack.kafka_sasl_bootstrap:
        pytest.skip("the broker is not ours: no SASL listener to test against")
    esp, partners = free_port(), free_port()
    cfg = isolated_settings(
        {**base_settings, "kafka_bootstrap": stack.kafka_sasl_bootstrap},
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=KAFKA_SASL_MECHANISM,
        kafka_sasl_username=KAFKA_SASL_USERNAME,
        kafka_sasl_password=KAFKA_SASL_PASSWORD,
        **{**standin_ports(), "standin_email_provider_port": esp, "standin_partners_port": partners},
        email_provider_url=f"http://127.0.0.1:{esp}",
        mail_house_dir=str(tmp_path),
        partners=json.loads(
            json.dumps(
                [
                    {
                        "name": "adnetwork",
                        "url": f"http://127.0.0.1:{partners}/partners/adnetwork",
                        "token": "dev-partner-adnetwork",
                    }
                ]
            )
        ),
    )
    assert cfg.kafka_config()["sasl.password"] == KAFKA_SASL_PASSWORD
    publisher = RequestPublisher(cfg)
    address = {
        "name": "Grace Hopper",
        "lines": ["1 Navy Way"],
        "city": "Arlington",
        "postal_code": "22202",
        "country": "US",
    }
    events = [
        publisher.prepare(
            {
                "event_id": str(uuid.uuid4()),
                "email": f"g{i}@example.com",
                "postal_address": address,
                "scopes": ["ALL"],
            }
        )
        for i in range(20)
    ]
    publisher.publish(events)
    with ExitStack() as services:
        services.enter_context(running(run_standins, cfg, "standins"))
        services.enter_context(running(run_intake, cfg, "intake"))
        for name in ("email_provider", "mail_house", "third_party_sharing"):
            services.enter_context(running(connector_runner(name, cfg), cfg, name))
        services.enter_context(running(run_confirmer, cfg, "confirmer"))
        confirmations = read_topic(cfg, cfg.confirmations_topic, expect=20, timeout=90)
    assert {r.decoded()["request_id"] for r in confirmations} == {e.record["event_id"] for e in events}


def test_wrong_sasl_password_is_refused(stack, base_settings):
    if not stack.kafka_sasl_bootstrap:
        pytest.skip("the broker is not ours: no SASL listener to test against")
    from services.common.settings import Settings

    cfg = Settings(
        **{**base_settings, "kafka_bootstrap": stack.kafka_sasl_bootstrap},
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=KAFKA_SASL_MECHANISM,
        kafka_sasl_username=KAFKA_SASL_USERNAME,
        kafka_sasl_password="wrong",
    )
    with pytest.raises(ConfigurationError, match="did not answer"):
        check_broker(cfg, timeout=5)


def test_a_free_port_is_reserved_until_its_server_binds_it() -> None:
    """``free_port`` leaves the port in TIME_WAIT: no bind to port 0 (another worker's
    ``free_port``) gets it, a plain bind of it is refused, and a server setting SO_REUSEADDR
    (``http.server``, as the stand-ins) binds it."""
    ports = {free_port() for _ in range(50)}
    handed: set[int] = set()
    for _ in range(2000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            handed.add(int(sock.getsockname()[1]))
    assert not handed & ports
    port = ports.pop()
    with socket.socket() as sock, pytest.raises(OSError, match="in use"):
        sock.bind(("127.0.0.1", port))
    server = ThreadingHTTPServer(("127.0.0.1", port), BaseHTTPRequestHandler)
    server.server_close()
