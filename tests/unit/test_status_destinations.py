"""``optout status`` without an event id lists the destinations file's destinations."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from services.cli.main import main
from services.common.settings import settings

ONE_EMAIL = """
[[destinations]]
name = "esp_eu"
kind = "email_provider"
scopes = ["EMAIL_MARKETING"]
identifiers = ["email"]
requires_one_of = ["email"]
[destinations.credentials]
token = { env = "OPTOUT_TEST_ESP_EU_TOKEN" }
"""


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    settings.cache_clear()
    yield
    settings.cache_clear()


def _status(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None) -> str:
    monkeypatch.chdir(tmp_path)  # no .env
    if text is not None:
        path = tmp_path / "destinations.toml"
        path.write_text(text)
        monkeypatch.setenv("OPTOUT_DESTINATIONS_FILE", str(path))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status"]) == 0
    return out.getvalue()


def test_status_lists_the_default_destinations(monkeypatch, tmp_path, fresh_settings) -> None:
    monkeypatch.delenv("OPTOUT_DESTINATIONS_FILE", raising=False)
    text = _status(monkeypatch, tmp_path, None)
    assert "deploy/destinations.toml" in text
    for name, kind in [("email_provider", "email_provider"), ("mail_house", "local_mail_house")]:
        assert any(line.split()[:2] == [name, kind] for line in text.splitlines())
    assert any(line.split()[:2] == ["sms_sender", "sms_optout_list"] for line in text.splitlines())
    assert [line for line in text.splitlines() if "warning" in line] == []  # every scope is served


def test_status_lists_the_files_destinations_and_warns_of_unserved_scopes(
    monkeypatch, tmp_path, fresh_settings
) -> None:
    monkeypatch.setenv("OPTOUT_TEST_ESP_EU_TOKEN", "secret-value")
    text = _status(monkeypatch, tmp_path, ONE_EMAIL)
    rows = [line.split() for line in text.splitlines()]
    assert ["esp_eu", "email_provider", "EMAIL_MARKETING", "optout.suppress.esp_eu", "token"] in rows
    assert "mail_house" not in text and "secret-value" not in text
    assert "warning: no destination serves POSTAL_MARKETING" in text
    assert "warning: no destination serves THIRD_PARTY_SHARING" in text


def test_run_all_runs_one_connector_per_destination(monkeypatch, tmp_path, fresh_settings) -> None:
    from services.cli.runner import parse_specs

    monkeypatch.setenv("OPTOUT_TEST_ESP_EU_TOKEN", "secret-value")
    _status(monkeypatch, tmp_path, ONE_EMAIL + ONE_EMAIL.replace("esp_eu", "esp_us"))
    connectors = [spec for spec in parse_specs(["all"]) if spec[0] == "connector"]
    assert connectors == [["connector", "esp_eu"], ["connector", "esp_us"]]
