"""The README's configuration table and .env.example are generated from the settings
(`optout config --markdown` / `--env-example`); they must not drift from the code."""

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from services.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _generated(flag: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["config", flag]) == 0
    return out.getvalue()


@pytest.fixture(autouse=True)
def _no_local_overrides(monkeypatch):
    monkeypatch.chdir(ROOT / "tests")  # no .env file is read from here


def test_readme_configuration_table_matches_the_settings():
    assert _generated("--markdown").strip() in (ROOT / "README.md").read_text()


def test_env_example_matches_the_settings():
    assert _generated("--env-example") == (ROOT / ".env.example").read_text()
