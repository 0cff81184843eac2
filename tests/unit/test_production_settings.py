"""OPTOUT_ENV=production refuses every development default (issue #10, pipeline), and
`optout config` masks secrets inside OPTOUT_KAFKA_EXTRA."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.cli.config import mask_kafka_extra
from services.cli.main import main
from services.common.errors import ConfigurationError
from services.common.settings import (
    DEV_SECRETS,
    PRODUCTION_REFUSES_DEV_VALUES,
    Settings,
    load_settings,
    production_problems,
    settings,
)
from services.devstack import config as devstack_config

ROOT = Path(__file__).resolve().parents[2]


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def production_values() -> dict[str, object]:
    """Every dev-only setting replaced by a production-looking value."""
    return {
        "env": "production",
        "kafka_bootstrap": "kafka-1.internal:9093",
        "database_url": "postgresql://optout_app:s3cr3t-app@db.internal:5432/optout",
        "admin_database_url": "postgresql://optout_admin:s3cr3t-admin@db.internal:5432/optout",
        "email_provider_url": "https://api.esp.example.com",
        "email_provider_token": "esp-live-token",
        "mail_house_dir": "/srv/optout/mail_house",
        "partners": [
            {"name": "adnetwork", "url": "https://adnetwork.example.com/optout", "token": "live-a"},
        ],
        "web_public_url": "https://unsubscribe.example.com",
        "web_token_keys": json.dumps({"2026a": _key()}),
        "web_current_kid": "2026a",
        "suppression_keys": json.dumps({"2026s": _key()}),
        "suppression_current_kid": "2026s",
        "inbound_public_url": "https://hooks.example.com",
        "inbound_mailgun_signing_key": "mailgun-live-signing-key",
        "inbound_twilio_auth_token": "twilio-live-auth-token",
    }


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the values a test passes count: no OPTOUT_* variable, no .env file."""
    monkeypatch.chdir(ROOT / "tests")
    for name in list(os.environ):
        if name.startswith("OPTOUT_"):
            monkeypatch.delenv(name)


def test_production_with_every_default_names_each_dev_only_setting_in_one_line() -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(env="production")
    message = str(refused.value)
    assert "\n" not in message
    for name in (
        "OPTOUT_KAFKA_BOOTSTRAP",
        "OPTOUT_DATABASE_URL",
        "OPTOUT_EMAIL_PROVIDER_URL",
        "OPTOUT_EMAIL_PROVIDER_TOKEN",
        "OPTOUT_MAIL_HOUSE_DIR",
        "OPTOUT_PARTNERS",
        "OPTOUT_WEB_PUBLIC_URL",
        "OPTOUT_WEB_TOKEN_KEYS",
        "OPTOUT_SUPPRESSION_KEYS",
        "OPTOUT_INBOUND_PUBLIC_URL",
        "OPTOUT_INBOUND_MAILGUN_SIGNING_KEY",
        "OPTOUT_INBOUND_TWILIO_AUTH_TOKEN",
    ):
        assert name in message, name
    # Never the secret values themselves.
    assert not any(secret in message for secret in DEV_SECRETS)


def test_production_values_are_accepted_and_development_keeps_its_defaults() -> None:
    assert production_problems(load_settings(**production_values())) == []
    assert load_settings().env == "development"  # the defaults reach the local stack


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"database_url": "postgresql://optout_app:app-secret@db.internal:5432/optout"}, "DATABASE_URL"),
        ({"admin_database_url": "postgresql://optout_admin:admin-secret@db/optout"}, "ADMIN_DATABASE_URL"),
        ({"kafka_sasl_password": "optout-secret"}, "KAFKA_SASL_PASSWORD"),
        ({"email_provider_token": "dev-esp-token"}, "EMAIL_PROVIDER_TOKEN"),
        ({"email_provider_url": "http://localhost:18081"}, "EMAIL_PROVIDER_URL"),
        (
            {"partners": [{"name": "p", "url": "http://127.0.0.1:9/x", "token": "live"}]},
            "PARTNERS",
        ),
        (
            {"partners": [{"name": "p", "url": "https://p.example.com", "token": "dev-adnetwork-token"}]},
            "PARTNERS",
        ),
        ({"web_public_url": "https://[::1]:8443"}, "WEB_PUBLIC_URL"),
    ],
)
def test_one_dev_value_among_production_values_is_refused(override: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=f"OPTOUT_{named}[,;]"):
        load_settings(**{**production_values(), **override})


def test_a_real_password_that_merely_contains_a_dev_word_is_accepted() -> None:
    values = {**production_values(), "database_url": "postgresql://u:myapp-secret-9@db.internal/optout"}
    assert production_problems(load_settings(**values)) == []


def test_the_checked_names_are_settings_and_every_secret_default_is_checked() -> None:
    assert set(PRODUCTION_REFUSES_DEV_VALUES) <= set(Settings.model_fields)
    with pytest.raises(ConfigurationError) as refused:
        load_settings(env="production")
    secret_defaults = [
        name
        for name, value in Settings.model_construct().model_dump().items()
        if isinstance(value, SecretStr) and value.get_secret_value()
    ]
    assert secret_defaults and all(f"OPTOUT_{n.upper()}" in str(refused.value) for n in secret_defaults)


def test_dev_secrets_cover_the_defaults_and_the_local_stack() -> None:
    assert {
        devstack_config.PG_APP_PASSWORD,
        devstack_config.PG_ADMIN_PASSWORD,
        devstack_config.KAFKA_SASL_PASSWORD,
    } <= DEV_SECRETS
    default = Settings()
    assert default.email_provider_token.get_secret_value() in DEV_SECRETS
    assert {p.token.get_secret_value() for p in default.partners} <= DEV_SECRETS
    assert set(json.loads(default.web_token_keys.get_secret_value()).values()) <= DEV_SECRETS


# --- optout config: secrets inside OPTOUT_KAFKA_EXTRA --------------------------------------------
def test_kafka_extra_secrets_are_masked() -> None:
    extra = {
        "sasl.password": "p1",
        "ssl.key.password": "p2",
        "ssl.keystore.password": "p3",
        "sasl.oauthbearer.client.secret": "p4",
        "sasl.oauthbearer.config": "clientSecret=p5",
        "ssl.key.pem": "p6",
        "sasl.jaas.config": "p7",
        "some.credentials.file.content": "p8",
        "linger.ms": "5",
        "client.id": "optout",
    }
    masked = mask_kafka_extra(extra)
    assert masked["linger.ms"] == "5" and masked["client.id"] == "optout"
    assert {k: v for k, v in masked.items() if k not in ("linger.ms", "client.id")} == dict.fromkeys(
        set(extra) - {"linger.ms", "client.id"}, "********"
    )


def test_optout_config_prints_no_secret_of_kafka_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OPTOUT_KAFKA_EXTRA",
        json.dumps({"sasl.oauthbearer.client.secret": "hunter2-oauth", "ssl.key.password": "hunter2-key"}),
    )
    monkeypatch.setenv("OPTOUT_KAFKA_SASL_PASSWORD", "hunter2-sasl")
    settings.cache_clear()
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            assert main(["config"]) == 0
    finally:
        settings.cache_clear()
    printed = out.getvalue()
    assert "hunter2" not in printed
    assert "sasl.oauthbearer.client.secret" in printed and "OPTOUT_KAFKA_SASL_PASSWORD=********" in printed
