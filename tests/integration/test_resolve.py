"""Requests that need attention are not kept forever by accident: once older than the
retention period they show in ``optout overdue`` and a gauge until someone resolves them
(``optout resolve``); purge then treats them like confirmed requests."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from services.common.settings import Settings
from services.domain.identity import sha256_hex
from services.observability.business import gauge_values, query_snapshot
from services.observability.exporter import Exporter
from services.retention.purge import purge_contact_details

pytestmark = pytest.mark.integration

RETENTION = timedelta(days=90)


def _insert(conn: psycopg.Connection, state: str, received_days_ago: float) -> str:
    event_id = f"attn-{uuid.uuid4()}"
    email = f"{event_id}@example.com"
    received = datetime.now(UTC) - timedelta(days=received_days_ago)
    conn.execute(
        "INSERT INTO requests (event_id, content_sha256, subject_key, email, phone, postal_address,"
        " email_sha256, scopes, source, requested_at, received_at, due_at, deadline_rule, state)"
        " VALUES (%s, 'h', %s, %s, '+14155550188', '{\"name\": \"A\"}', %s, ARRAY['ALL'], 'API',"
        " %s, %s, %s, 'default', %s)",
        (
            event_id,
            "email_sha256:" + sha256_hex(email),
            email,
            sha256_hex(email),
            received,
            received,
            received + timedelta(days=15),
            state,
        ),
    )
    conn.execute(
        "INSERT INTO destination_status (command_id, event_id, destination, status, detail,"
        " first_issued_at, last_issued_at, acked_at) VALUES (%s, %s, 'email_provider', %s,"
        " 'address previously hard-bounced', %s, %s, %s)",
        (
            f"cmd-{event_id}",
            event_id,
            "REJECTED" if state == "NEEDS_ATTENTION" else "PENDING",
            received,
            received,
            received,
        ),
    )
    return event_id


def _cli(database: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env={"OPTOUT_DATABASE_URL": database["app"], "OPTOUT_RETENTION_DAYS": "90", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _past_retention_gauge(conn: psycopg.Connection) -> int:
    now = datetime.now(UTC)
    value = gauge_values(query_snapshot(conn, now, RETENTION), now, ())["attention_past_retention"]
    return int(value)


def test_old_unresolved_attention_shows_until_resolved_then_purge_treats_it_as_done(
    database: dict[str, str],
) -> None:
    with psycopg.connect(database["app"], autocommit=True) as conn:
        before = _past_retention_gauge(conn)
        old = _insert(conn, "NEEDS_ATTENTION", 120)
        recent = _insert(conn, "NEEDS_ATTENTION", 10)
        pending = _insert(conn, "PENDING", 120)
        assert _past_retention_gauge(conn) == before + 1

    listed = _cli(database, "overdue")
    assert listed.returncode == 0, listed.stderr
    section = listed.stdout.split("need attention for longer than the retention period")[1]
    assert old in section and recent not in section and pending not in section
    as_json = json.loads(_cli(database, "overdue", "--json").stdout)
    flagged = {r["event_id"]: r["attention_past_retention"] for r in as_json}
    assert flagged[old] is True and flagged[pending] is False

    # Resolving: one line, no PII in the note; the request leaves the list and the gauge.
    refused = _cli(database, "resolve", old, "--note", "told jane@example.com by phone")
    assert refused.returncode == 2 and "note" in refused.stderr and refused.stdout == ""
    done = _cli(
        database, "resolve", old, "--note", "provider ticket ESP-4711: bounce kept; no further action"
    )
    assert done.returncode == 0, done.stderr
    assert f"resolved {old}" in done.stdout
    again = _cli(database, "resolve", old, "--note", "twice")
    assert again.returncode == 1 and "already resolved" in again.stderr
    not_attention = _cli(database, "resolve", pending, "--note", "x")
    assert not_attention.returncode == 1 and "PENDING" in not_attention.stderr
    unknown = _cli(database, "resolve", "no-such-event", "--note", "x")
    assert unknown.returncode == 1 and "no request" in unknown.stderr

    after = _cli(database, "overdue", "--json")
    assert old not in {r["event_id"] for r in json.loads(after.stdout)}
    with psycopg.connect(database["app"], autocommit=True) as conn:
        assert _past_retention_gauge(conn) == before
        row = conn.execute(
            "SELECT state, resolved_at IS NOT NULL, resolution_note FROM requests WHERE event_id = %s", (old,)
        ).fetchone()
        assert row == ("NEEDS_ATTENTION", True, "provider ticket ESP-4711: bounce kept; no further action")
        # Purge counts retention from resolved_at: not yet ...
        purge_contact_details(conn, datetime.now(UTC), RETENTION)
        emails = dict(
            conn.execute(
                "SELECT event_id, email FROM requests WHERE event_id = ANY(%s)", ([old, recent, pending],)
            ).fetchall()
        )
        assert emails[old] is not None
        # ... but once the retention period has passed since it was resolved.
        purge_contact_details(conn, datetime.now(UTC) + RETENTION + timedelta(minutes=1), RETENTION)
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT event_id, email, phone, postal_address, pii_purged_at IS NOT NULL FROM requests"
                " WHERE event_id = ANY(%s)",
                ([old, recent, pending],),
            ).fetchall()
        }
    assert rows[old] == (None, None, None, True)
    for kept in (recent, pending):
        assert rows[kept][0] == f"{kept}@example.com" and rows[kept][3] is False


def test_the_exporter_exports_the_past_retention_gauge(base_settings: dict[str, Any]) -> None:
    cfg = Settings(**base_settings, retention_days=90)
    with psycopg.connect(cfg.dsn(), autocommit=True) as conn:
        _insert(conn, "NEEDS_ATTENTION", 200)
        expected = _past_retention_gauge(conn)
    assert expected >= 1
    exporter = Exporter(cfg, specs=[])
    try:
        exporter.refresh_business()
    finally:
        exporter.close()
    assert REGISTRY.get_sample_value("optout_requests_needing_attention_past_retention") == expected
