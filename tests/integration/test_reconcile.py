"""``optout reconcile`` against the real broker and database and the Mailgun stand-in (issue
#13's "done when"): N suppressions in our state and at the stand-in, 1% deleted from the
stand-in, one entry only at the stand-in. Reconcile finds exactly the deleted ones (no false
positive), re-issues them (a re-run does not duplicate the command), the real connector loop
restores them at the stand-in, the confirmer confirms nothing for them, and the stand-in-only
entry is reported as unknown and left there."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from services.cli.main import main as cli_main
from services.common import audit
from services.common.errors import ConfigurationError
from services.common.settings import Settings, settings
from services.confirmer import service as confirmer
from services.connectors.kit import run_connector
from services.connectors.registry import build_connector
from services.domain.identity import sha256_hex
from services.observability import reconcile as reconcile_gauges
from services.reconcile.run import reconcile
from services.standins.mailgun_api import MailgunStandin
from services.standins.sms_optout_api import OptedOut, SmsOptOutStandin
from services.standins.web import StandinServer
from services.suppression.entries import Entry, Kind, seal, suppression_ring
from tests.integration.test_connectors import FAST_RETRIES
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration

NAME = "mailgun_rc"
DOMAIN = "mg.example.com"
N = 300
DELETED = N // 100 * 1  # 1%


def destinations_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(
        f"""
[[destinations]]
name = "{NAME}"
kind = "mailgun"
scopes = ["EMAIL_MARKETING"]
identifiers = ["email"]
requires_one_of = ["email"]
[destinations.settings]
domain = "{DOMAIN}"
base_url = "{url}"
[destinations.credentials]
api_key = {{ env = "RECONCILE_IT_MAILGUN_KEY" }}
"""
    )
    return path


def load_state(
    cfg: Settings, emails: list[str], others: dict[str, tuple[str, bool]], kind: Kind = Kind.EMAIL
) -> None:
    """Suppressed for EMAIL_MARKETING, with their sealed values; ``others``: subject -> (scope,
    suppressed) rows the destination must not count."""
    ring = suppression_ring(cfg)
    prefix, scope = ("email", "EMAIL_MARKETING") if kind is Kind.EMAIL else ("phone", "SMS_MARKETING")
    since = datetime(2026, 11, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    with psycopg.connect(cfg.dsn()) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                (f"{prefix}_sha256:{sha256_hex(e)}", scope, True, since, f"ev-{i}", "OPT_OUT", now)
                for i, e in enumerate(emails)
            ]
            + [
                (subject, scope, suppressed, since, "ev-x", "OPT_OUT" if suppressed else "OPT_IN", now)
                for subject, (scope, suppressed) in others.items()
            ],
        )
        cur.executemany(
            "INSERT INTO suppression_list (kind, sha256, sealed, scopes, first_request_id,"
            " last_request_id, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    kind.value,
                    sha256_hex(e),
                    seal(ring, Entry(kind, sha256_hex(e), e)),
                    [scope],
                    f"ev-{i}",
                    f"ev-{i}",
                    now,
                    now,
                )
                for i, e in enumerate(emails)
            ],
        )


def ignored(cfg: Settings) -> float | None:
    return REGISTRY.get_sample_value(
        "optout_messages_consumed_total",
        {"service": "confirmer", "topic": cfg.acks_topic, "outcome": "ignored"},
    )


def test_reconcile_finds_and_restores_exactly_the_deleted_entries(
    base_settings: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECONCILE_IT_MAILGUN_KEY", "mg-rc")
    standin = MailgunStandin(api_key="mg-rc")
    emails = [f"person.{i}@example.com" for i in range(N)]
    with StandinServer(standin.handle, name="mailgun") as server:
        cfg = isolated_settings(
            base_settings, destinations_file=destinations_file(tmp_path, server.url), **FAST_RETRIES
        )
        load_state(
            cfg,
            emails,
            {
                f"email_sha256:{sha256_hex('opted.back.in@example.com')}": ("EMAIL_MARKETING", False),
                f"email_sha256:{sha256_hex('postal.only@example.com')}": ("POSTAL_MARKETING", True),
                f"phone_sha256:{sha256_hex('+14155550100')}": ("SMS_MARKETING", True),
            },
        )
        at = datetime(2026, 11, 1, tzinfo=UTC).isoformat()
        table = standin.unsubscribed.setdefault(DOMAIN, {})
        for email in emails:
            table[email] = {"address": email, "tags": ["*"], "created_at": at}
        deleted = emails[5 :: N // DELETED][:DELETED]
        for email in deleted:
            table.pop(email)
        table["only.there@example.com"] = {
            "address": "only.there@example.com",
            "tags": ["*"],
            "created_at": at,
        }

        report = reconcile(cfg, NAME)
        assert report.drift.expected == N and report.drift.present == N - DELETED + 1
        assert [m.sha256 for m in report.drift.missing] == sorted(sha256_hex(e) for e in deleted)
        assert report.drift.unknown == [sha256_hex("only.there@example.com")]
        assert report.reissued == DELETED and report.unsendable == 0

        # A re-run before the connector ran re-issues the same commands (same ids).
        assert reconcile(cfg, NAME).reissued == DELETED
        commands = [r.decoded() for r in read_topic(cfg, cfg.suppress_topic(NAME), expect=2 * DELETED)]
        assert len({c["command_id"] for c in commands}) == DELETED
        assert {c["email"] for c in commands} == set(deleted)
        assert all(c["request_id"].startswith(f"reconcile:{NAME}:") for c in commands)

        connector = build_connector(cfg, NAME)

        def connector_main(settings: Settings, stop: threading.Event) -> None:
            run_connector(settings, connector, stop)

        ignored_before = ignored(cfg) or 0
        with running(confirmer.run, cfg, "confirmer"), running(connector_main, cfg, NAME):
            wait_until(
                lambda: all(e in standin.unsubscribed[DOMAIN] for e in deleted),
                timeout=60,
                message="the deleted entries restored at the stand-in",
            )
            acks = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=2 * DELETED)]
            wait_until(
                lambda: (ignored(cfg) or 0) - ignored_before >= 2 * DELETED,
                timeout=30,
                message="the confirmer skipping the re-issues' acks",
            )
        assert {a["status"] for a in acks} == {"APPLIED"}
        assert read_topic(cfg, cfg.confirmations_topic) == []

        # The audit trail of the request that suppressed a lost entry: re-sent twice (the
        # re-run), acknowledged once (the second ack changes nothing).
        with psycopg.connect(cfg.dsn()) as conn:
            trail = audit.timeline(conn, f"ev-{emails.index(deleted[0])}")
        assert [(e.step, e.destination, e.status) for e in trail] == [
            ("reconcile_resent", NAME, None),
            ("reconcile_resent", NAME, None),
            ("acknowledged", NAME, "APPLIED"),
        ]
        command = trail[0].detail.rsplit(" ", 1)[-1] if trail[0].detail else ""
        assert trail[0].detail == f"reconcile re-sent to {NAME}: command {command}"
        assert trail[2].detail is not None and trail[2].detail.startswith(f"reconcile command {command}")
        assert read_topic(cfg, cfg.acks_dlq_topic) == []

        after = reconcile(cfg, NAME, repair=False)
        assert after.drift.missing == [] and after.reissued == 0
        assert after.drift.unknown == [sha256_hex("only.there@example.com")]
        assert "only.there@example.com" in standin.unsubscribed[DOMAIN]  # reported, not removed

        with psycopg.connect(cfg.dsn()) as conn:
            row = conn.execute(
                "SELECT expected, present, missing, unknown, reissued FROM reconcile_reports"
                " WHERE destination = %s",
                (NAME,),
            ).fetchone()
        assert row == (N, N + 1, 0, 1, 0)
        with psycopg.connect(cfg.dsn()) as conn:
            assert reconcile_gauges.export(conn) == 1  # what `optout run exporter` exports
        assert REGISTRY.get_sample_value("optout_reconcile_missing", {"destination": NAME}) == 0
        assert REGISTRY.get_sample_value("optout_reconcile_unknown", {"destination": NAME}) == 1

        # The CLI: exit 1 while something is missing and not re-issued (--no-repair).
        table.pop(emails[0])
        for key, value in {
            "DESTINATIONS_FILE": str(cfg.destinations_file),
            "DATABASE_URL": base_settings["database_url"],
            "KAFKA_BOOTSTRAP": base_settings["kafka_bootstrap"],
            "TOPIC_PREFIX": cfg.topic_prefix,
        }.items():
            monkeypatch.setenv(f"OPTOUT_{key}", value)
        settings.cache_clear()
        try:
            capsys.readouterr()
            assert cli_main(["reconcile", "--destination", NAME, "--no-repair", "--json"]) == 1
            printed = capsys.readouterr().out
            out = json.loads(printed[printed.index("{\n") :])  # after any log line
            assert out["missing_sha256"] == [sha256_hex(emails[0])] and out["reissued"] == 0
            assert "@" not in json.dumps(out)  # hashes only
            assert cli_main(["reconcile", "--destination", NAME]) == 0
            assert "re-issued as commands" in capsys.readouterr().out
        finally:
            settings.cache_clear()


def test_a_kind_that_cannot_be_read_back_is_refused_in_one_line(base_settings: dict[str, Any]) -> None:
    cfg = Settings(**base_settings)
    name = next(d.id for d in cfg.destinations if d.kind == "partners")  # hashes, no list to read
    with pytest.raises(ConfigurationError, match="reconciliation is not supported"):
        reconcile(cfg, name)


def test_the_sms_opt_out_list_is_read_back_by_e164_number(
    base_settings: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_IT_SMS_KEY_ID", "AKIARECONCILE")
    monkeypatch.setenv("RECONCILE_IT_SMS_SECRET", "reconcile-secret")
    standin = SmsOptOutStandin({"AKIARECONCILE": "reconcile-secret"}, region="us-east-1")
    phones = [f"+1415555{i:04d}" for i in range(40)]
    with StandinServer(standin.handle, name="sms") as server:
        path = tmp_path / "destinations.toml"
        path.write_text(
            f"""
[[destinations]]
name = "sms_rc"
kind = "sms_optout_list"
scopes = ["SMS_MARKETING"]
identifiers = ["phone"]
requires_one_of = ["phone"]
[destinations.settings]
region = "us-east-1"
opt_out_list_name = "optout"
endpoint_url = "{server.url}"
[destinations.credentials]
access_key_id = {{ env = "RECONCILE_IT_SMS_KEY_ID" }}
secret_access_key = {{ env = "RECONCILE_IT_SMS_SECRET" }}
"""
        )
        cfg = isolated_settings(base_settings, destinations_file=path)
        load_state(
            cfg,
            phones,
            {
                f"email_sha256:{sha256_hex('a@example.com')}": ("SMS_MARKETING", True),
                # suppressed, but erased from the suppression list: nothing to re-send
                f"phone_sha256:{sha256_hex('+14155551234')}": ("SMS_MARKETING", True),
            },
            Kind.PHONE,
        )
        for phone in phones[1:]:
            standin.lists["optout"][phone] = OptedOut(0.0, False)
        standin.lists["optout"]["+14155559999"] = OptedOut(0.0, True)  # opted out by replying STOP

        report = reconcile(cfg, "sms_rc")
        assert [m.sha256 for m in report.drift.missing] == sorted(
            [sha256_hex(phones[0]), sha256_hex("+14155551234")]
        )
        assert report.drift.unknown == [sha256_hex("+14155559999")]
        assert (report.reissued, report.unsendable) == (1, 1)
        (command,) = [r.decoded() for r in read_topic(cfg, cfg.suppress_topic("sms_rc"), expect=1)]
        assert command["phone"] == phones[0] and command["scopes"] == ["SMS_MARKETING"]
