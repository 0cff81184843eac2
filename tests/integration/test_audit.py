"""The audit trail (issue #13) on the real broker and database: a request goes through
intake, the email_provider connector (against its stand-in) and the confirmer; ``optout audit
EVENT_ID`` shows recorded, command sent, acknowledged, confirmed in that order; ``optout
purge`` adds purged; the export streams it; no raw email is in any audit row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.cli.main import main
from services.common.audit import purge_audit
from services.common.errors import ConfigurationError
from services.common.settings import Settings, settings
from services.publisher.publish import RequestPublisher
from services.retention.purge import purge_contact_details
from services.web.status import QUERY, to_view
from tests.support.pipeline import email_provider_pipeline, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(base_settings: dict[str, Any]) -> Iterator[Settings]:
    with email_provider_pipeline(base_settings) as (cfg, _standin):
        yield cfg


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cfg: Settings, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("OPTOUT_DATABASE_URL", cfg.dsn())
    settings.cache_clear()
    try:
        capsys.readouterr()
        status = main(list(args))
        captured = capsys.readouterr()
    finally:
        settings.cache_clear()
    return status, captured.out, captured.err


def _state(cfg: Settings, event_id: str) -> str | None:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT state FROM requests WHERE event_id = %s", (event_id,)).fetchone()
    return str(row[0]) if row else None


def test_timeline_in_order_purge_appends_and_no_raw_email(
    pipeline: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = pipeline
    email = f"audit-{uuid.uuid4().hex[:8]}@example.com"
    event_id = f"evt-{uuid.uuid4()}"
    publisher = RequestPublisher(cfg)
    publisher.publish(
        [publisher.prepare({"event_id": event_id, "email": email, "scopes": ["EMAIL_MARKETING"]})]
    )
    wait_until(lambda: _state(cfg, event_id) == "CONFIRMED", timeout=30)

    status, out, _ = _cli(monkeypatch, capsys, cfg, "audit", event_id, "--json")
    assert status == 0
    steps = [(e["step"], e["destination"], e["status"]) for e in json.loads(out)]
    assert steps == [
        ("recorded", None, "OPT_OUT"),
        ("command_sent", "email_provider", None),
        ("acknowledged", "email_provider", "APPLIED"),
        ("confirmed", None, None),
    ]

    with psycopg.connect(cfg.dsn(), autocommit=True) as conn:
        assert purge_contact_details(conn, datetime.now(UTC) + timedelta(days=1), timedelta(days=0)) == 1
        rows = conn.execute("SELECT * FROM audit_events WHERE event_id = %s", (event_id,)).fetchall()
    assert email not in repr(rows) and email.split("@")[0] not in repr(rows)

    # The web status page's query reads the same timeline (services/web/status.py).
    with psycopg.connect(cfg.dsn()) as conn:
        (view,) = [to_view(row) for row in conn.execute(QUERY, ([event_id], [], None)).fetchall()]
    assert [step for _, step in view.history][-2:] == ["confirmed", "purged"]

    status, out, _ = _cli(monkeypatch, capsys, cfg, "audit", event_id)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["at", "(UTC)", "step"]
    assert [line.split()[2] for line in lines[1:]] == [
        "recorded",
        "command_sent",
        "acknowledged",
        "confirmed",
        "purged",
    ]

    today = datetime.now(UTC).date()
    out_file = tmp_path / "audit.csv"
    status, _, err = _cli(
        monkeypatch,
        capsys,
        cfg,
        "audit",
        "export",
        "--from",
        str(today - timedelta(days=1)),
        "--to",
        str(today + timedelta(days=2)),
        "--format",
        "csv",
        "--out",
        str(out_file),
    )
    assert status == 0 and "exported 5 audit events" in err
    exported = out_file.read_text().splitlines()
    assert exported[0] == "id,event_id,at,step,destination,status,detail"
    assert sum(1 for line in exported if event_id in line) == 5

    status, _, err = _cli(monkeypatch, capsys, cfg, "audit", "no-such-request")
    assert status == 1 and "no audit events" in err


def test_audit_events_are_append_only_for_the_app_role_and_purged_through_the_function(
    database: dict[str, str],
) -> None:
    with psycopg.connect(database["app"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_events (event_id, at, step) VALUES ('e-old', now() - interval '800 days', "
            "'recorded'), ('e-mid', now() - interval '100 days', 'recorded'), ('e-new', now(), 'recorded')"
        )
        for statement in (
            "UPDATE audit_events SET step = 'confirmed'",
            "DELETE FROM audit_events WHERE event_id = 'e-new'",
            "TRUNCATE audit_events",
            "UPDATE audit_retention_floor SET min_days = 0",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # The function refuses less than the floor (730 days), also when called directly.
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="kept at least 730 days"):
            conn.execute("SELECT purge_audit_events(30)")
        with pytest.raises(ConfigurationError, match="below the audit trail's floor of 730 days"):
            purge_audit(conn, 30)
        assert purge_audit(conn, 730, dry_run=True) == 1
        assert purge_audit(conn, 730) == 1
        assert _events(conn) == ["e-mid", "e-new"]
    # A test (or an operator with the migration owner's role) may lower the floor.
    with psycopg.connect(database["admin"], autocommit=True) as conn:
        conn.execute("UPDATE audit_retention_floor SET min_days = 0")
    with psycopg.connect(database["app"], autocommit=True) as conn:
        assert purge_audit(conn, 30) == 1
        assert _events(conn) == ["e-new"]


def _events(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT event_id FROM audit_events ORDER BY id")]


def test_append_keeps_every_value_as_given(base_settings: dict[str, Any]) -> None:
    """``append`` passes its columns as array literals: instants to the microsecond in any
    zone, NULLs, empty strings and details with quotes, commas, braces and backslashes come
    back as they were given."""
    from datetime import timezone

    from services.common.audit import AuditEvent, Step, append, timeline

    east = timezone(timedelta(hours=5, minutes=30))
    events = [
        AuditEvent("evt-1", datetime(2026, 12, 1, 6, 0, 0, 123456, tzinfo=UTC), Step.RECORDED),
        AuditEvent(
            "evt-1",
            datetime(2026, 12, 1, 11, 30, 0, 1, tzinfo=east),
            Step.ACKNOWLEDGED,
            destination="email_provider",
            status="REJECTED",
            detail='400 {"errors": [{"message": "a, \\"b\\" \\\\ c"}]} NULL',
        ),
        AuditEvent("evt-1", datetime(2026, 12, 1, 6, 0, 1, tzinfo=UTC), Step.CONFIRMED, status="", detail=""),
    ]
    with psycopg.connect(base_settings["database_url"]) as conn:
        append(conn, events)
        back = timeline(conn, "evt-1")
    assert [(e.event_id, e.at, e.step, e.destination, e.status, e.detail) for e in back] == [
        (e.event_id, e.at, e.step, e.destination, e.status, e.detail) for e in events
    ]
