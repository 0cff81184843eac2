"""The destinations file: the shipped default serves every scope with four destinations, and
every mistake is one line naming the file, the destination and the field."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from services.common.contract import Identifier, Scope
from services.common.destinations import DEFAULT_DESTINATIONS_FILE, load_destinations
from services.common.errors import ConfigurationError
from services.common.settings import Settings

EMAIL = """
[[destinations]]
name = "{name}"
kind = "email_provider"
scopes = ["EMAIL_MARKETING"]
identifiers = ["customer_id", "email"]
requires_one_of = ["email"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_destinations(_write(tmp_path, text), environ or {})
    return str(info.value)


def test_the_shipped_file_is_four_destinations_serving_every_scope() -> None:
    d = load_destinations()
    assert d.names == ["email_provider", "mail_house", "third_party_sharing", "sms_sender"]
    assert [x.kind for x in d] == ["email_provider", "local_mail_house", "partners", "sms_optout_list"]
    assert d["email_provider"].scopes == {Scope.EMAIL_MARKETING}
    assert d["email_provider"].identifiers == {Identifier.CUSTOMER_ID, Identifier.EMAIL}
    assert d["mail_house"].requires_one_of == {Identifier.POSTAL_ADDRESS}
    third = d["third_party_sharing"]
    assert third.identifiers == {
        Identifier.CUSTOMER_ID,
        Identifier.EMAIL_SHA256,
        Identifier.PHONE_SHA256,
        Identifier.DEVICE_ID,  # a browser's GPC opt-out may carry only its device id
    }
    assert Identifier.DEVICE_ID in third.requires_one_of
    assert not third.identifiers & {Identifier.EMAIL, Identifier.PHONE}  # hashes only
    sms = d["sms_sender"]
    assert sms.scopes == {Scope.SMS_MARKETING}
    assert sms.identifiers == {Identifier.CUSTOMER_ID, Identifier.PHONE}
    assert sms.requires_one_of == {Identifier.PHONE}
    assert sms.options["endpoint_url"] == "http://127.0.0.1:18096"  # the stand-in of `optout run standins`
    assert d.unserved_scopes() == []
    assert Settings().destinations.names == d.names
    assert DEFAULT_DESTINATIONS_FILE.name == "destinations.toml"


def test_two_email_destinations_are_two_topics(tmp_path: Path) -> None:
    path = _write(tmp_path, EMAIL.format(name="esp_a") + EMAIL.format(name="esp_b"))
    cfg = Settings(destinations_file=path, topic_prefix="t.")
    assert "t.optout.suppress.esp_a" in cfg.all_topics()
    assert "t.optout.suppress.esp_b.dlq" in cfg.all_topics()
    assert not any("email_provider" in t for t in cfg.all_topics())
    assert [d.id for d in cfg.destinations.for_scopes([Scope.EMAIL_MARKETING])] == ["esp_a", "esp_b"]
    assert cfg.destinations.unserved_scopes() == [
        Scope.POSTAL_MARKETING,
        Scope.THIRD_PARTY_SHARING,
        Scope.SMS_MARKETING,
    ]


def test_credentials_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-a-file\n")
    text = EMAIL.format(name="esp") + '[destinations.credentials]\ntoken = { env = "ESP_TOKEN" }\n'
    text += 'other = { file = "key" }\n'
    d = load_destinations(_write(tmp_path, text), {"ESP_TOKEN": "from-env"})
    creds = d["esp"].credentials
    assert creds["token"].get_secret_value() == "from-env"
    assert creds["other"].get_secret_value() == "from-a-file"  # relative to the file, stripped
    assert "from-env" not in repr(d["esp"])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (EMAIL.format(name="Esp-A"), "destination 'Esp-A': name 'Esp-A' must be lower-case"),
        (EMAIL.format(name="esp") + EMAIL.format(name="esp"), "destination 'esp': duplicate name"),
        (EMAIL.format(name="esp").replace('"EMAIL_MARKETING"', '"FAX"'), "scopes: unknown 'FAX'"),
        (EMAIL.format(name="esp").replace('["customer_id", "email"]', '["email", "iris"]'), "unknown 'iris'"),
        (
            EMAIL.format(name="esp").replace('requires_one_of = ["email"]', 'requires_one_of = ["phone"]'),
            "requires_one_of names phone, which is not in identifiers",
        ),
        (
            EMAIL.format(name="esp").replace('kind = "email_provider"\n', ""),
            "destination 'esp': missing 'kind'",
        ),
        (EMAIL.format(name="esp") + 'colour = "blue"\n', "unknown key 'colour'"),
        (
            EMAIL.format(name="esp") + '[destinations.credentials]\ntoken = { env = "NOT_SET_ANYWHERE" }\n',
            "credentials.token: environment variable NOT_SET_ANYWHERE is not set or empty",
        ),
        (
            EMAIL.format(name="esp") + '[destinations.credentials]\ntoken = { file = "/nonexistent/key" }\n',
            "credentials.token: cannot read /nonexistent/key",
        ),
        (
            EMAIL.format(name="esp") + '[destinations.credentials]\ntoken = "sk-live-secret"\n',
            'credentials.token must be { env = "VAR" } or { file = "/path" } (never the secret itself)',
        ),
        (EMAIL.format(name="esp") + "scopes = [", "not valid TOML"),
    ],
)
def test_each_mistake_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    message = _error(tmp_path, text)
    assert says in message
    assert "\n" not in message
    assert str(tmp_path / "destinations.toml") in message


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    message = _error(tmp_path, EMAIL.format(name="esp") + 'kind = "twice"\n')
    assert "not valid TOML" in message and "at line 8" in message


def test_every_problem_is_reported_one_line_each(tmp_path: Path) -> None:
    text = EMAIL.format(name="BAD") + EMAIL.format(name="esp").replace(
        'requires_one_of = ["email"]', 'requires_one_of = ["fax"]'
    )
    lines = _error(tmp_path, text).splitlines()
    assert len(lines) == 2
    assert "'BAD'" in lines[0] and "'esp'" in lines[1]


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read it"):
        load_destinations(tmp_path / "nope.toml")


def test_settings_refuse_a_bad_file_when_they_are_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="duplicate name"):
        Settings(destinations_file=_write(tmp_path, EMAIL.format(name="x") * 2))


def test_settings_and_credential_files_may_name_environment_variables(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("from-a-file\n")
    text = EMAIL.format(name="esp") + (
        "[destinations.settings]\n"
        'base_url = "http://127.0.0.1:${ESP_PORT:-18091}/v3"\n'
        'hosts = ["${ESP_HOST}", "b"]\n'
        'nested = { dir = "${ESP_DIR:-/inbox}" }\n'
        "number = 3\n"
        "[destinations.credentials]\n"
        'token = { file = "${SECRETS}/key" }\n'
    )
    environ = {"ESP_HOST": "a", "SECRETS": str(tmp_path / "secrets")}
    esp = load_destinations(_write(tmp_path, text), environ)["esp"]
    assert esp.options == {
        "base_url": "http://127.0.0.1:18091/v3",  # the default: ESP_PORT is unset
        "hosts": ["a", "b"],
        "nested": {"dir": "/inbox"},
        "number": 3,
    }
    assert esp.credentials["token"].get_secret_value() == "from-a-file"
    environ["ESP_PORT"] = "9"
    assert load_destinations(_write(tmp_path, text), environ)["esp"].options["base_url"].endswith(":9/v3")


def test_an_unset_variable_without_a_default_is_one_line(tmp_path: Path) -> None:
    text = EMAIL.format(name="esp") + '[destinations.settings]\nhost = "${MISSING_HOST}"\n'
    message = _error(tmp_path, text)
    assert message.count("\n") == 0
    assert "destination 'esp': settings.host: environment variable MISSING_HOST is not set" in message


def test_the_all_kinds_file_is_valid_with_its_development_values() -> None:
    all_kinds = DEFAULT_DESTINATIONS_FILE.with_name("destinations.all-kinds.toml")
    dev = all_kinds.with_suffix(".env").read_text().splitlines()
    environ = dict(line.split("=", 1) for line in dev if line and not line.startswith("#"))
    environ |= {"OPTOUT_SFTP_KNOWN_HOSTS": "/k", "OPTOUT_SFTP_PRIVATE_KEY_FILE": str(all_kinds)}
    found = load_destinations(all_kinds, environ)
    assert [(d.id, d.kind) for d in found] == [
        ("sendgrid", "sendgrid"),
        ("ses", "ses"),
        ("mailgun", "mailgun"),
        ("mail_house", "sftp_mail_house"),
        ("partners", "webhook_partners"),
        ("sms", "sms_optout_list"),
    ]
    assert found["sms"].credentials["secret_access_key"].get_secret_value() == "dev-sms-secret"
    assert found["sendgrid"].options["base_url"] == "http://127.0.0.1:18091"
    assert found["mail_house"].options["port"] == "12222"


def test_make_run_destinations_exports_the_file_and_its_development_values() -> None:
    """``make run DESTINATIONS=FILE`` evaluates deploy/destinations-env.sh FILE: the file,
    and the values of FILE's sibling .env that the environment does not already set."""
    all_kinds = DEFAULT_DESTINATIONS_FILE.with_name("destinations.all-kinds.toml")
    script = DEFAULT_DESTINATIONS_FILE.with_name("destinations-env.sh")
    shown = "; ".join(
        f'echo "{v}=${v}"' for v in ("OPTOUT_DESTINATIONS_FILE", "MAILGUN_API_KEY", "SENDGRID_API_KEY")
    )
    shown += '; echo "DATABROKER_WEBHOOK_SECRET=$DATABROKER_WEBHOOK_SECRET"'
    env = {"PATH": os.environ["PATH"], "SENDGRID_API_KEY": "mine"}
    out = subprocess.run(
        ["bash", "-c", f'eval "$(bash {script} {all_kinds})" && {shown}'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [
        f"OPTOUT_DESTINATIONS_FILE={all_kinds}",
        "MAILGUN_API_KEY=dev-mailgun-key",
        "SENDGRID_API_KEY=mine",  # already set: kept
        "DATABROKER_WEBHOOK_SECRET=whsec_b3B0b3V0LURFVi1PTkxZLXdlYmhvb2sta2V5LWRhdGFicm9rZXI=",
    ]
