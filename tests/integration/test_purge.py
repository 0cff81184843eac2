"""`optout purge` removes raw contact details of long-confirmed requests and keeps what
is needed to keep suppressing and to prove compliance."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from services.common.settings import PartnerEndpoint
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.devstack.install import find_pg_bindir
from services.domain.identity import sha256_hex
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from services.retention.purge import purge_contact_details
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.partners_api import PartnersStandin
from services.standins.web import StandinServer
from tests.support.pipeline import isolated_settings, running, sms_standin, wait_until

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _insert(conn, state: str, confirmed_days_ago: float | None) -> str:
    event_id = f"purge-{uuid.uuid4()}"
    email = f"{event_id}@example.com"
    confirmed = NOW - timedelta(days=confirmed_days_ago) if confirmed_days_ago is not None else None
    conn.execute(
        "INSERT INTO requests (event_id, content_sha256, subject_key, customer_id, email, phone,"
        " postal_address, email_sha256, phone_sha256, scopes, source, requested_at, due_at,"
        " deadline_rule, state, confirmed_at) VALUES (%s, 'h', 'k', 'c-1', %s, '+14155550123',"
        " '{\"name\": \"A\"}', %s, 'ph', ARRAY['ALL'], 'API', %s, %s, 'default', %s, %s)",
        (event_id, email, sha256_hex(email), NOW - timedelta(days=400), NOW, state, confirmed),
    )
    return event_id


def test_purge_keeps_hashes_and_only_touches_old_confirmed_requests(database):
    with psycopg.connect(database["app"], autocommit=True) as conn:
        old = _insert(conn, "CONFIRMED", 120)
        recent = _insert(conn, "CONFIRMED", 10)
        pending = _insert(conn, "PENDING", None)
        attention = _insert(conn, "NEEDS_ATTENTION", None)
        would = purge_contact_details(conn, NOW, timedelta(days=90), dry_run=True)
        assert would >= 1
        purged = purge_contact_details(conn, NOW, timedelta(days=90), chunk=1)
        assert purged == would
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT event_id, email, phone, postal_address, email_sha256, customer_id, scopes,"
                " pii_purged_at FROM requests WHERE event_id = ANY(%s)",
                ([old, recent, pending, attention],),
            ).fetchall()
        }
        assert rows[old][:3] == (None, None, None)
        assert rows[old][3] == sha256_hex(f"{old}@example.com")
        assert rows[old][4:6] == ("c-1", ["ALL"]) and rows[old][6] == NOW
        for kept in (recent, pending, attention):
            assert rows[kept][0] == f"{kept}@example.com" and rows[kept][6] is None
        # A second run finds nothing left to do.
        assert purge_contact_details(conn, NOW, timedelta(days=90)) == 0


def test_purge_cli_dry_run(database):
    env = {"OPTOUT_DATABASE_URL": database["app"], "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "purge", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "would purge the contact details of" in done.stdout


def test_purge_cli_refuses_an_audit_retention_below_the_floor_before_removing_anything(database):
    env = {
        "OPTOUT_DATABASE_URL": database["app"],
        "PATH": "/usr/bin:/bin",
        "OPTOUT_AUDIT_RETENTION_DAYS": "30",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "purge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "OPTOUT_AUDIT_RETENTION_DAYS=30 is below the audit trail's floor of 730 days" in done.stderr


# --- a whole-database dump after purging -------------------------------------------------------
def _pg_dump(database: dict[str, str]) -> str:
    """The whole test database as SQL text (schema and every row of every table)."""
    bindir = find_pg_bindir()
    tool = str(bindir / "pg_dump") if bindir and (bindir / "pg_dump").is_file() else shutil.which("pg_dump")
    assert tool, "pg_dump not found (PostgreSQL client binaries)"
    done = subprocess.run(
        [tool, "--no-owner", "--no-privileges", "--dbname", database["superuser"] or database["admin"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE public.requests" in done.stdout
    return done.stdout


def _run_to_confirmation(
    base_settings: dict[str, Any],
    mail_dir: Path,
    requests: list[dict[str, Any]],
    rejected_emails: tuple[str, ...] = (),
    state: str = "CONFIRMED",
) -> list[str]:
    """Publish ``requests`` and run intake, the connectors (against the stand-ins)
    and the confirmer until every request is in ``state`` (the email provider stand-in
    refuses ``rejected_emails``)."""
    esp = EmailProviderStandin(token="purge-esp-token", rejected=rejected_emails)
    tokens = {"adnetwork": "tok-a", "databroker": "tok-b"}
    partners_api = PartnersStandin(tokens)
    with (
        StandinServer(esp.handle, name="email_provider") as esp_server,
        StandinServer(partners_api.handle, name="partners") as partners_server,
        sms_standin(),
    ):
        cfg = isolated_settings(
            base_settings,
            mail_house_dir=str(mail_dir),
            email_provider_url=esp_server.url,
            email_provider_token=SecretStr("purge-esp-token"),
            partners=[
                PartnerEndpoint(name=n, url=f"{partners_server.url}/partners/{n}", token=SecretStr(t))
                for n, t in tokens.items()
            ],
        )
        publisher = RequestPublisher(cfg)
        prepared = [publisher.prepare(r) for r in requests]
        publisher.publish(prepared)
        ids = [p.record["event_id"] for p in prepared]

        def confirmed() -> bool:
            with psycopg.connect(cfg.dsn()) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM requests WHERE event_id = ANY(%s) AND state = %s", (ids, state)
                ).fetchone()
            return row is not None and row[0] == len(ids)

        services = [("intake", run_intake), ("confirmer", run_confirmer)] + [
            (name, connector_runner(name, cfg)) for name in cfg.destinations.names
        ]
        with contextlib.ExitStack() as stack:
            for name, main in services:
                stack.enter_context(running(main, cfg, name))
            wait_until(confirmed, timeout=120, message=f"every request {state}")
    return ids


def _purge_now(database: dict[str, str], mail_dir: Path) -> str:
    env = {
        "OPTOUT_DATABASE_URL": database["app"],
        "OPTOUT_MAIL_HOUSE_DIR": str(mail_dir),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "purge", "--retention-days", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_after_purge_a_database_dump_holds_no_email_phone_or_address(
    base_settings: dict[str, Any], database: dict[str, str], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    digits = f"{int(tag, 16) % 10_000:04d}"
    typed_email = f"  Dump.{tag}@Example.COM "
    typed_phone = f"(917) 555-{digits}"
    address = {
        "name": f"Ada Purge{tag}",
        "lines": [f"{tag} Erasure Street", f"Flat {tag}"],
        "city": f"Forgetton{tag}",
        "region": None,
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    }
    only_email = f"only.{tag}@example.org"
    only_phone = f"+44 20 7946 {digits}"
    ids = _run_to_confirmation(
        base_settings,
        tmp_path,
        [
            {"email": typed_email, "phone": typed_phone, "postal_address": address, "scopes": ["ALL"]},
            {"email": only_email, "scopes": ["ALL"]},
            {"phone": only_phone, "scopes": ["ALL"]},
        ],
    )
    secrets = [
        typed_email.strip(),
        typed_email.strip().lower(),
        only_email,
        f"dump.{tag}",
        f"only.{tag}",
        typed_phone,
        f"+1917555{digits}",
        f"917555{digits}",
        only_phone,
        f"+44207946{digits}",
        f"207946{digits}",
        *address["lines"],
        address["name"],
        address["city"],
    ]
    before = _pg_dump(database)
    # The check finds them before the purge (the dump does hold the request's rows).
    assert typed_email.strip().lower() in before and f"+1917555{digits}" in before
    assert address["lines"][0] in before and only_email in before and f"+44207946{digits}" in before

    _purge_now(database, tmp_path / "nothing-here")
    after = _pg_dump(database)
    for event_id in ids:
        assert event_id in after  # the requests are still there, as proof
    found = [s for s in secrets if s.lower() in after.lower()]
    assert found == []
    # Hashes stay: enough to keep suppressing the person and to prove it.
    assert sha256_hex(only_email) in after and sha256_hex(f"+44207946{digits}") in after


def test_purge_cli_removes_mail_house_files_older_than_the_retention_period(
    database: dict[str, str], tmp_path: Path
) -> None:
    today = datetime.now(UTC).date()
    old = [tmp_path / f"suppressions-{(today - timedelta(days=d)).isoformat()}.csv" for d in (40, 31)]
    kept = tmp_path / f"suppressions-{(today - timedelta(days=29)).isoformat()}.csv"
    for path in [*old, kept]:
        path.write_text("request_id,command_id,name\r\nr,c,ADA LOVELACE\r\n")
    env = {
        "OPTOUT_DATABASE_URL": database["app"],
        "OPTOUT_MAIL_HOUSE_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }

    def purge(*extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "purge", "--retention-days", "30", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "would remove 2 mail-house file(s)" in purge("--dry-run")
    assert all(p.exists() for p in old)
    assert "removed 2 mail-house file(s)" in purge()
    assert not any(p.exists() for p in old) and kept.exists()
    assert "removed 0 mail-house file(s)" in purge()


def test_purge_cleans_the_folder_of_every_mail_house_destination(
    database: dict[str, str], tmp_path: Path
) -> None:
    old_day = (datetime.now(UTC).date() - timedelta(days=40)).isoformat()
    folders = [tmp_path / "house_a", tmp_path / "house_b"]
    entries = []
    for folder in folders:
        folder.mkdir()
        (folder / f"suppressions-{old_day}.csv").write_text("request_id,command_id,name\r\nr,c,ADA\r\n")
        name = folder.name
        entries.append(
            f'[[destinations]]\nname = "{name}"\nkind = "local_mail_house"\nscopes = ["POSTAL_MARKETING"]\n'
            f'identifiers = ["postal_address"]\nrequires_one_of = ["postal_address"]\n'
            f'[destinations.settings]\nfolder = "{folder}"\n'
        )
    (tmp_path / "destinations.toml").write_text("\n".join(entries))
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "purge", "--retention-days", "30"],
        env={
            "OPTOUT_DATABASE_URL": database["app"],
            "OPTOUT_DESTINATIONS_FILE": str(tmp_path / "destinations.toml"),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for folder in folders:
        assert f"removed 1 mail-house file(s) older than 30 days from {folder}" in done.stdout
        assert list(folder.iterdir()) == []


def test_a_resolved_request_that_needed_attention_is_purged_like_a_confirmed_one(
    base_settings: dict[str, Any], database: dict[str, str], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    email = f"bounced.{tag}@example.net"
    [event_id] = _run_to_confirmation(
        base_settings,
        tmp_path,
        [{"email": email, "scopes": ["ALL"]}],
        rejected_emails=(email,),
        state="NEEDS_ATTENTION",
    )
    _purge_now(database, tmp_path)
    with psycopg.connect(database["app"]) as conn:  # needs attention, unresolved: kept
        row = conn.execute("SELECT email FROM requests WHERE event_id = %s", (event_id,)).fetchone()
    assert row == (email,)
    env = {"OPTOUT_DATABASE_URL": database["app"], "PATH": "/usr/bin:/bin"}
    resolved = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "resolve", event_id, "--note", "ESP ticket 4711"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resolved.returncode == 0, resolved.stderr
    _purge_now(database, tmp_path)
    after = _pg_dump(database)
    assert event_id in after and "ESP ticket 4711" in after
    assert email not in after and f"bounced.{tag}" not in after
