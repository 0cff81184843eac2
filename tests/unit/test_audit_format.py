"""Formatting of the audit trail (services/common/audit.py) and the export's date parsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.cli.audit import parse_day
from services.common.audit import AuditEvent, Step, csv_header, csv_line, jsonl_line, safe_detail, table
from services.common.errors import ConfigurationError

AT = datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)


def test_safe_detail_redacts_emails_and_phones_and_keeps_one_line() -> None:
    detail = "rejected ada@example.com\nphone +1 415 555 0123 unknown"
    assert safe_detail(detail) == "rejected [email] phone [phone] unknown"
    assert safe_detail(None) is None
    assert len(safe_detail("x" * 5000) or "") == 500


def test_table_lists_steps_in_order_with_dashes_for_missing_values() -> None:
    events = [
        AuditEvent("e-1", AT, Step.RECORDED, status="OPT_OUT", id=1),
        AuditEvent("e-1", AT, Step.COMMAND_SENT, destination="email_provider", detail="cmd-1", id=2),
    ]
    lines = table(events).splitlines()
    assert lines[0].split() == ["at", "(UTC)", "step", "destination", "status", "detail"]
    assert lines[1].split() == ["2026-11-29", "12:00:05", "recorded", "-", "OPT_OUT"]
    assert lines[2].split() == ["2026-11-29", "12:00:05", "command_sent", "email_provider", "-", "cmd-1"]


def test_times_are_shown_in_utc() -> None:
    at = AT.astimezone(timezone(timedelta(hours=2)))
    event = AuditEvent("e-1", at, Step.CONFIRMED, id=3)
    assert "2026-11-29 12:00:05" in table([event])
    assert json.loads(jsonl_line(event))["at"] == "2026-11-29T12:00:05+00:00"


def test_csv_and_jsonl_lines() -> None:
    event = AuditEvent("e-1", AT, Step.ACKNOWLEDGED, "email_provider", "REJECTED", 'said "no", twice', id=7)
    assert csv_header() == "id,event_id,at,step,destination,status,detail\n"
    assert csv_line(event) == (
        '7,e-1,2026-11-29T12:00:05+00:00,acknowledged,email_provider,REJECTED,"said ""no"", twice"\n'
    )
    assert csv_line(AuditEvent("e-1", AT, Step.PURGED, id=8)).endswith(",purged,,,\n")
    assert json.loads(jsonl_line(event)) == {
        "id": 7,
        "event_id": "e-1",
        "at": "2026-11-29T12:00:05+00:00",
        "step": "acknowledged",
        "destination": "email_provider",
        "status": "REJECTED",
        "detail": 'said "no", twice',
    }


def test_parse_day() -> None:
    assert parse_day("2026-11-29") == datetime(2026, 11, 29, tzinfo=UTC)
    assert parse_day("2026-11-29T10:00:00") == datetime(2026, 11, 29, 10, tzinfo=UTC)
    with pytest.raises(ConfigurationError, match="not a date"):
        parse_day("yesterday")


def test_status_page_shows_the_history_without_system_names() -> None:
    from services.web import pages

    view = pages.RequestView(
        "e1",
        "confirmed",
        ("EMAIL_MARKETING",),
        AT,
        AT,
        AT,
        1,
        1,
        history=((AT, "recorded"), (AT, "command_sent"), (AT, "confirmed"), (AT, "<odd>")),
    )
    html = pages._history(view)
    assert html.count("<li>") == 4
    assert "2026-11-29 12:00 UTC: Received" in html and "Done everywhere" in html
    assert "&lt;odd&gt;" in html and "email_provider" not in html
    assert pages._history(pages.RequestView("e2", "pending", (), AT, AT, None, 0, 1)) == ""
