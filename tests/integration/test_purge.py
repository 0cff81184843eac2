"""`optout purge` removes raw contact details of long-confirmed requests and keeps what
is needed to keep suppressing and to prove compliance."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from services.domain.identity import sha256_hex
from services.retention.purge import purge_contact_details

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
