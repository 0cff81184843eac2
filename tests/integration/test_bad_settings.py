"""A wrong broker address, a database that is down or a bad setting ends with one clear
line and a non-zero exit within 30 seconds: never a hang, never a wall of traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _run(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env={**os.environ, "OPTOUT_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        ({"OPTOUT_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, ("run", "intake"), "OPTOUT_KAFKA_BOOTSTRAP"),
        (
            {"OPTOUT_DATABASE_URL": "postgresql://optout_app:x@127.0.0.1:1/optout"},
            ("run", "confirmer"),
            "OPTOUT_DATABASE_URL",
        ),
        ({"OPTOUT_BATCH_SIZE": "many"}, ("run", "intake"), "OPTOUT_BATCH_SIZE"),
        ({"OPTOUT_KAFKA_EXTRA": "{not json"}, ("topics", "create"), "OPTOUT_KAFKA_EXTRA"),
        ({}, ("run", "connector", "fax_machine"), "fax_machine"),
        # Nobody would be told, yet every command would be acknowledged APPLIED.
        ({"OPTOUT_PARTNERS": "[]"}, ("run", "connector", "third_party_sharing"), "OPTOUT_PARTNERS"),
        ({"OPTOUT_ENV": "production"}, ("run", "intake"), "OPTOUT_EMAIL_PROVIDER_TOKEN"),
        # The inbound webhooks service (docs/inbound.md): keys are checked before listening.
        (
            {"OPTOUT_INBOUND_SENDGRID_PUBLIC_KEY": "nope"},
            ("run", "inbound"),
            "OPTOUT_INBOUND_SENDGRID_PUBLIC_KEY",
        ),
        (
            {"OPTOUT_INBOUND_SNS_CERTIFICATE": "/no/such.pem"},
            ("run", "inbound"),
            "OPTOUT_INBOUND_SNS_TOPIC_ARNS",
        ),
        (
            {
                "OPTOUT_INBOUND_SNS_CERTIFICATE": "/no/such.pem",
                "OPTOUT_INBOUND_SNS_TOPIC_ARNS": '["arn:aws:sns:us-east-1:123456789012:ses"]',
            },
            ("run", "inbound"),
            "OPTOUT_INBOUND_SNS_CERTIFICATE",
        ),
    ],
)
def test_one_clear_line_and_a_non_zero_exit(stack, database, env, args, says):
    code, stderr, seconds = _run(
        {"OPTOUT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "OPTOUT_DATABASE_URL": database["app"], **env},
        *args,
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0
    assert seconds < 30
    assert len(lines) == 1, stderr
    assert lines[0].startswith("optout: ") and says in lines[0]
    assert "Traceback" not in stderr


_EMAIL = """
[[destinations]]
name = "{name}"
kind = "{kind}"
scopes = ["EMAIL_MARKETING"]
identifiers = ["customer_id", "email"]
requires_one_of = ["email"]
"""
_BAD_DESTINATIONS = {
    "unknown kind": (_EMAIL.format(name="esp", kind="carrier_pigeon"), "unknown kind 'carrier_pigeon'"),
    "duplicate name": (_EMAIL.format(name="esp", kind="email_provider") * 2, "'esp': duplicate name"),
    "bad name": (_EMAIL.format(name="ESP.1", kind="email_provider"), "name 'ESP.1' must be lower-case"),
    "unknown scope": (
        _EMAIL.format(name="esp", kind="email_provider").replace("EMAIL_MARKETING", "SMOKE_SIGNALS"),
        "scopes: unknown 'SMOKE_SIGNALS'",
    ),
    "unknown identifier": (
        _EMAIL.format(name="esp", kind="email_provider").replace('"customer_id", ', '"dna", '),
        "identifiers: unknown 'dna'",
    ),
    "requires_one_of not a subset": (
        _EMAIL.format(name="esp", kind="email_provider").replace('= ["email"]', '= ["phone"]'),
        "requires_one_of names phone, which is not in identifiers",
    ),
    "missing env var": (
        _EMAIL.format(name="esp", kind="email_provider")
        + '[destinations.credentials]\ntoken = { env = "OPTOUT_T_NOPE" }\n',
        "environment variable OPTOUT_T_NOPE is not set",
    ),
    "missing file": (
        _EMAIL.format(name="esp", kind="email_provider")
        + '[destinations.credentials]\ntoken = { file = "/nope/key" }\n',
        "cannot read /nope/key",
    ),
    "unreadable TOML": (
        _EMAIL.format(name="esp", kind="email_provider") + 'kind = "twice"\n',
        "not valid TOML: Cannot overwrite a value (at line 8",
    ),
}


# Every problem through `optout config`; two of them through the other commands too (they all
# read the file the same way, before doing anything else).
_CASES = [(problem, ("config",)) for problem in sorted(_BAD_DESTINATIONS)] + [
    (problem, args)
    for problem in ("unknown kind", "missing env var")
    for args in (("topics", "create"), ("run", "connector", "esp"))
]


@pytest.mark.parametrize(("problem", "args"), _CASES)
def test_a_bad_destinations_file_is_one_line_for_every_command(stack, database, tmp_path, problem, args):
    text, says = _BAD_DESTINATIONS[problem]
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    code, stderr, _ = _run(
        {
            "OPTOUT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "OPTOUT_DATABASE_URL": database["app"],
            "OPTOUT_DESTINATIONS_FILE": str(path),
        },
        *args,
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"optout: destinations file {path}") or "unknown kind" in lines[0], lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in stderr


def test_settings_a_kind_refuses_are_one_line_when_its_connector_starts(stack, tmp_path):
    path = tmp_path / "destinations.toml"
    path.write_text(
        _EMAIL.format(name="esp", kind="email_provider") + '[destinations.settings]\nbase_uri = "x"\n'
    )
    code, stderr, _ = _run(
        {"OPTOUT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "OPTOUT_DESTINATIONS_FILE": str(path)},
        "run",
        "connector",
        "esp",
    )
    assert code == 2
    assert (
        stderr.strip()
        == "optout: destination 'esp' (email_provider): settings.base_uri: Extra inputs are not permitted"
    )


def test_a_connector_for_a_destination_not_in_the_file_is_one_line(stack, database, tmp_path):
    path = tmp_path / "destinations.toml"
    path.write_text(_EMAIL.format(name="esp_a", kind="email_provider"))
    code, stderr, _ = _run(
        {"OPTOUT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "OPTOUT_DESTINATIONS_FILE": str(path)},
        "run",
        "connector",
        "email_provider",
    )
    assert code == 2
    assert stderr.strip() == (
        "optout: unknown connector 'email_provider': "
        "not a destination in the destinations file (known: esp_a)"
    )
