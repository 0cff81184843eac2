"""Destinations are configuration: a file with two email destinations (both of the
``email_provider`` kind, each pointed at its own stand-in) routes one request to both
topics, both connectors acknowledge it, and the request is confirmed once naming both."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from services.common.destinations import load_destinations
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.web import StandinServer
from tests.support.pipeline import isolated_settings, read_topic, running

pytestmark = pytest.mark.integration

TWO_EMAIL_PROVIDERS = """
[[destinations]]
name = "esp_a"
kind = "email_provider"
scopes = ["EMAIL_MARKETING"]
identifiers = ["customer_id", "email"]
requires_one_of = ["email"]
[destinations.settings]
base_url = "{url_a}"

[[destinations]]
name = "esp_b"
kind = "email_provider"
scopes = ["EMAIL_MARKETING"]
identifiers = ["email"]
requires_one_of = ["email"]
[destinations.settings]
base_url = "{url_b}"
[destinations.credentials]
token = {{ env = "OPTOUT_TEST_ESP_B_TOKEN" }}
"""


def test_two_email_destinations_both_get_the_request_and_it_is_confirmed_once(
    base_settings: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTOUT_TEST_ESP_B_TOKEN", "token-of-b")
    a, b = EmailProviderStandin(token="token-of-a"), EmailProviderStandin(token="token-of-b")
    with StandinServer(a.handle, name="esp_a") as server_a, StandinServer(b.handle, name="esp_b") as server_b:
        path = tmp_path / "destinations.toml"
        path.write_text(TWO_EMAIL_PROVIDERS.format(url_a=server_a.url, url_b=server_b.url))
        cfg = isolated_settings(base_settings, destinations_file=path, email_provider_token="token-of-a")
        assert cfg.destinations.names == ["esp_a", "esp_b"]
        assert not any("email_provider" in t for t in cfg.all_topics())

        publisher = RequestPublisher(cfg)
        email = f"two-{uuid.uuid4().hex[:8]}@example.com"
        event = publisher.prepare({"event_id": str(uuid.uuid4()), "email": email, "scopes": ["ALL"]})
        publisher.publish([event])
        with ExitStack() as services:
            services.enter_context(running(run_intake, cfg, "intake"))
            for name in cfg.destinations.names:
                services.enter_context(running(connector_runner(name, cfg), cfg, name))
            services.enter_context(running(run_confirmer, cfg, "confirmer"))
            confirmations = read_topic(cfg, cfg.confirmations_topic, expect=1, timeout=60)
            commands = {n: read_topic(cfg, cfg.suppress_topic(n), expect=1) for n in cfg.destinations.names}
            acks = read_topic(cfg, cfg.acks_topic, expect=2)

    for name, records in commands.items():
        assert len(records) == 1
        assert records[0].decoded()["destination"] == name
    assert commands["esp_a"][0].decoded()["customer_id"] is None  # no customer id in this request
    assert {r.decoded()["destination"] for r in acks} == {"esp_a", "esp_b"}
    assert {r.decoded()["status"] for r in acks} == {"APPLIED"}
    assert email in a.suppressed and email in b.suppressed  # each stand-in got it, each with its token
    assert len(confirmations) == 1
    confirmed = confirmations[0].decoded()
    assert confirmed["request_id"] == event.record["event_id"]
    assert sorted(d["destination"] for d in confirmed["destinations"]) == ["esp_a", "esp_b"]


def test_the_default_file_is_used_without_the_setting(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(base_settings)
    assert cfg.destinations.names == load_destinations().names
    assert cfg.suppress_topic("email_provider") in cfg.all_topics()
