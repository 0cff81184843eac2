"""The rows ``optout replay`` has PostgreSQL compute (migration 0019, services/replay/run.py):
the SQL command id equals the Python one, and a batch's rows are those of the snapshot it was
read in, whatever changed in its subject range since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from services.common import audit
from services.common.settings import Settings
from services.domain.identity import sha256_hex
from services.replay.plan import replay_command_id
from services.replay.run import Batch, in_snapshot, record_batch, snapshot_connection

pytestmark = pytest.mark.integration

SUBJECTS = [
    "cust:C-1",
    f"email_sha256:{sha256_hex('ada@example.com')}",
    f"phone_sha256:{sha256_hex('+15550100')}",
    "postal:" + "a" * 64,
    'cust:Ünïcødé \\ "quoted" \t tab',
    "",
]
REPLAY_IDS = ["20261201T120000000000Z-email_provider-0a1b2c3d", "r", "naïve-ÿ"]


def test_the_sql_command_id_is_the_python_one(database: dict[str, str]) -> None:
    cases = [(r, d, s) for r in REPLAY_IDS for d in ("email_provider", "mail_house") for s in SUBJECTS]
    with psycopg.connect(database["app"]) as conn:
        found = conn.execute(
            "SELECT replay_command_id(r, d, s) FROM unnest(%s::text[], %s::text[], %s::text[])"
            " WITH ORDINALITY AS t(r, d, s, n) ORDER BY n",
            ([r for r, _, _ in cases], [d for _, d, _ in cases], [s for _, _, s in cases]),
        ).fetchall()
    assert [row[0] for row in found] == [replay_command_id(r, d, s) for r, d, s in cases]


def _state(conn: psycopg.Connection[object], subject: str, event_id: str, since: datetime) -> None:
    conn.execute(
        "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at)"
        " VALUES (%s, 'EMAIL_MARKETING', true, %s, %s, 'OPT_OUT', %s)",
        (subject, since, event_id, since),
    )


def test_a_batchs_rows_are_those_of_its_snapshot(database: dict[str, str]) -> None:
    """The replay_commands and ``replayed`` audit rows of a batch, written after intake added a
    subject to its range and suppressed another's scope again: exactly the subjects read (but
    the skipped one)."""
    cfg = Settings(database_url=database["app"], admin_database_url=database["admin"])
    dest = cfg.destinations["email_provider"]
    since = datetime(2026, 11, 1, tzinfo=UTC)
    read = ["cust:a", "cust:c", "cust:e"]
    with psycopg.connect(database["app"], autocommit=True) as setup:
        for n, subject in enumerate(read):
            _state(setup, subject, f"evt-{n}", since)
    with (
        psycopg.connect(database["app"], autocommit=True) as reader,
        snapshot_connection(psycopg.connect(database["app"], autocommit=True)) as writer,
        psycopg.connect(database["app"], autocommit=True) as intake,
    ):
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with reader.transaction():
            exported = reader.execute("SELECT pg_export_snapshot()").fetchone()
            assert exported is not None
            _state(intake, "cust:b", "evt-late", since)  # after the read: not in the batch
            intake.execute("UPDATE suppression_state SET event_id = 'evt-newer' WHERE subject = 'cust:e'")
            batch = Batch("cust:", "cust:e", str(exported[0]))
            skipped = ["cust:c"]
            record_batch(writer, "run-1", dest.id, ["EMAIL_MARKETING"], None, batch, skipped)
            with in_snapshot(writer, batch.snapshot):
                written = audit.record_replayed_batch(
                    writer,
                    "run-1",
                    dest.id,
                    ["EMAIL_MARKETING"],
                    None,
                    batch.lo,
                    batch.hi,
                    skipped,
                    since + timedelta(days=1),
                    "replayed to email_provider (run-1)",
                )
        assert written == 2
        recorded = writer.execute("SELECT command_id FROM replay_commands ORDER BY 1").fetchall()
        trail = writer.execute(
            "SELECT event_id, command_id, detail FROM audit_events WHERE step = 'replayed' ORDER BY 1"
        ).fetchall()
    ids = {s: replay_command_id("run-1", dest.id, s) for s in ("cust:a", "cust:e")}
    assert sorted(r[0] for r in recorded) == sorted(ids.values())
    assert trail == [
        ("evt-0", ids["cust:a"], f"replayed to email_provider (run-1): command {ids['cust:a']}"),
        ("evt-2", ids["cust:e"], f"replayed to email_provider (run-1): command {ids['cust:e']}"),
    ]
