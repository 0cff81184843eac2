"""``optout replay-status`` on the real database: per run, what was sent, acknowledged as
applied, rejected, still awaited, and the acks not in the audit trail yet."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from services.cli.main import main
from services.common.settings import settings

pytestmark = pytest.mark.integration

RUNS = """
INSERT INTO replay_runs (replay_id, destination, started_at, finished_at, sent, skipped) VALUES
    ('old', 'email_provider', '2026-12-01 06:00+00', '2026-12-01 06:10+00', 5, 1),
    ('new', 'email_provider', '2026-12-01 07:00+00', NULL, 4, 0),
    ('other', 'mail_house', '2026-12-01 08:00+00', NULL, 2, 0)
"""
ACKS = """
INSERT INTO replay_commands (command_id, replay_id, destination, status, audit_pending) VALUES
    ('c1', 'old', 'email_provider', 'APPLIED', false),
    ('c2', 'old', 'email_provider', 'ALREADY_SUPPRESSED', false),
    ('c3', 'old', 'email_provider', 'REJECTED', false),
    ('c4', 'new', 'email_provider', 'APPLIED', true),
    ('c5', 'new', 'email_provider', 'APPLIED', false)
"""


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], dsn: str, *args: str) -> str:
    monkeypatch.setenv("OPTOUT_DATABASE_URL", dsn)
    settings.cache_clear()
    try:
        capsys.readouterr()
        assert main(["replay-status", *args]) == 0
        return capsys.readouterr().out
    finally:
        settings.cache_clear()


def test_replay_status_counts_each_runs_acks(
    database: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, capsys, database["app"]).strip() == "no replay runs"
    with psycopg.connect(database["admin"]) as conn:
        conn.execute(RUNS)
        conn.execute(ACKS)
    found: list[dict[str, Any]] = json.loads(
        run(monkeypatch, capsys, database["app"], "--destination", "email_provider", "--json")
    )
    assert [(r["replay_id"], r["sent"], r["applied"], r["rejected"], r["awaiting_ack"]) for r in found] == [
        ("new", 4, 2, 0, 2),
        ("old", 5, 2, 1, 2),
    ]
    assert [r["acks_not_in_audit_trail_yet"] for r in found] == [1, 0]
    assert found[1]["finished_at"] is not None and found[0]["finished_at"] is None
    text = run(monkeypatch, capsys, database["app"], "--limit", "2")
    assert [line.split()[0] for line in text.splitlines()[1:3]] == ["other", "new"]
    assert "1 acks of open runs are not in the audit trail yet" in text
