"""The SQL side of ``optout replay`` (services/replay/run.py): the SQL command id (migration
0019) equals the Python one, a batch's audit rows are those it read, whatever changed in its
subject range since, the reader reads any subject back, the confirmer records replay acks."""

from __future__ import annotations

import queue
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.common import audit
from services.common.clock import to_millis
from services.common.contract import AckStatus, Destination, Identifier, Scope
from services.common.settings import Settings
from services.confirmer.outcomes import Ack
from services.confirmer.store import apply_acks
from services.domain.identity import sha256_hex
from services.replay import run
from services.replay.plan import replay_command_id
from services.replay.run import BatchReader, BatchResult, Prepared
from tests.support.pipeline import isolated_settings, read_topic

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


def test_a_batchs_rows_are_those_it_read(database: dict[str, str]) -> None:
    """The ``replayed`` audit rows of a batch, written after intake added a subject to its
    range and another request took over a subject's suppression: exactly the subjects read
    (but the skipped one), with the requests read (event ids with characters COPY escapes
    come back as they were)."""
    cfg = Settings(database_url=database["app"], admin_database_url=database["admin"])
    dest = cfg.destinations["email_provider"]
    since = datetime(2026, 11, 1, tzinfo=UTC)
    read = ["cust:a", "cust:c", "cust:e"]
    events = ["evt-0", "evt-1", "evt 2\\x20 \\ \t\n\r é"]
    with psycopg.connect(database["app"], autocommit=True) as conn:
        for subject, event in zip(read, events, strict=True):
            _state(conn, subject, event, since)
        found = BatchReader(dest, None).next(conn, "", 10)
        assert found is not None
        batch, rows = found
        _state(conn, "cust:b", "evt-late", since)  # after the read: not in the batch
        conn.execute("UPDATE suppression_state SET event_id = 'evt-newer' WHERE subject = 'cust:e'")
        sent = [row for row in rows if row[0] != "cust:c"]  # cust:c skipped
        keys = [replay_command_id("run-1", dest.id, row[0]) for row in sent]
        result = BatchResult(len(keys), 1, len(rows))
        prepared = Prepared(
            keys, [b""] * len(keys), ["cust:c"], since + timedelta(days=1), result, [r[4] for r in sent]
        )
        conns: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        conns.put(conn)
        run.Replayer(cfg, dest.id)._audit(conns, "run-1", batch, prepared)
        trail = conn.execute(
            "SELECT event_id, command_id, detail, at FROM audit_events WHERE step = 'replayed' ORDER BY 1"
        ).fetchall()
    ids = {s: replay_command_id("run-1", dest.id, s) for s in ("cust:a", "cust:e")}
    at = since + timedelta(days=1)
    assert sorted(trail) == sorted(
        [
            ("evt-0", ids["cust:a"], f"replayed to email_provider (run-1): command {ids['cust:a']}", at),
            (events[2], ids["cust:e"], f"replayed to email_provider (run-1): command {ids['cust:e']}", at),
        ]
    )


def test_copy_text_escapes_what_copy_reads(database: dict[str, str]) -> None:
    """``audit.replayed_rows`` (COPY text): a destination and label with backslashes, tabs and
    newlines are written as they are."""
    at = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
    with psycopg.connect(database["app"], autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(audit.REPLAYED_COPY) as copy:
            copy.write(
                audit.replayed_rows("d\\\t\n\rx", ["c1", "c2"], [("e1",), ("e2", "e3")], at, "l\\a\tb")
            )
        rows = conn.execute(
            "SELECT event_id, at, step, destination, detail, command_id FROM audit_events ORDER BY 1"
        ).fetchall()
    assert rows == [
        (e, at, "replayed", "d\\\t\n\rx", f"l\\a\tb: command {c}", c)
        for e, c in [("e1", "c1"), ("e2", "c2"), ("e3", "c2")]
    ]


def test_the_confirmer_records_replay_acks_as_they_arrive(database: dict[str, str]) -> None:
    """The replayer writes no ``replay_commands`` row: the confirmer inserts one per
    acknowledged command of a known run (a success is final, a refusal gives way to a
    success), leaves acks of unknown runs unknown, and refuses a destination the run does not
    send to. Nothing is confirmed."""
    at = datetime(2026, 12, 1, tzinfo=UTC)

    def ack(command: str, status: AckStatus, replay_id: str = "run-1", dest: str = "email_provider") -> Ack:
        return Ack(command, f"replay:{replay_id}", dest, status, f"{status} detail", at)

    with psycopg.connect(database["app"]) as conn:
        conn.execute(
            "INSERT INTO replay_runs (replay_id, destination, started_at)"
            " VALUES ('run-1', 'email_provider', %s)",
            (at,),
        )
        first = apply_acks(
            conn,
            [
                ack("c1", AckStatus.REJECTED),
                ack("c1", AckStatus.APPLIED),
                ack("c2", AckStatus.ALREADY_SUPPRESSED),
                ack("c3", AckStatus.APPLIED, replay_id="run-unknown"),
                ack("c4", AckStatus.APPLIED, dest="mail_house"),
            ],
            at,
        )
        second = apply_acks(conn, [ack("c1", AckStatus.REJECTED), ack("c2", AckStatus.APPLIED)], at)
        rows = conn.execute(
            "SELECT command_id, replay_id, destination, status FROM replay_commands ORDER BY 1"
        ).fetchall()
    assert (first.replayed, first.unknown, set(first.mismatched), first.confirmations) == (
        3,
        {"c3"},
        {"c4"},
        [],
    )
    assert second.replayed == 2 and not second.unknown
    assert rows == [
        ("c1", "run-1", "email_provider", "APPLIED"),
        ("c2", "run-1", "email_provider", "ALREADY_SUPPRESSED"),
    ]


def test_the_sql_milliseconds_are_to_millis(database: dict[str, str]) -> None:
    """The batch reader has PostgreSQL turn ``since`` into ``requested_at``: the same
    milliseconds as ``clock.to_millis`` (the double nearest the epoch seconds, times 1000,
    truncated), exact milliseconds and microseconds, before and after 1970."""
    base = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    moments = [base + timedelta(microseconds=n * 997) for n in range(2000)]
    moments += [base + timedelta(milliseconds=n) for n in range(2000)]
    moments += [datetime(1969, 12, 31, 23, 59, 59, 999_000 - n, tzinfo=UTC) for n in range(0, 5000, 7)]
    with psycopg.connect(database["app"]) as conn:
        found = conn.execute(
            "SELECT trunc(extract(epoch FROM t)::float8 * 1000)::bigint"
            " FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            (moments,),
        ).fetchall()
    assert [row[0] for row in found] == [to_millis(m) for m in moments]


def test_the_batch_reader_reads_any_subject_back(database: dict[str, str]) -> None:
    """Subjects come as one text value (newline and backslash escaped): customer ids with
    newlines, backslashes, spaces and tabs are read back exactly, with their scopes and newest
    ``since``."""
    odd = ["cust:a\nb", "cust:back\\slash", "cust:two\\\\n", "cust:sp ace\ttab", "cust:\\n", "cust:é\r\n"]
    since = datetime(2026, 11, 1, 8, 30, 0, 123_000, tzinfo=UTC)
    with psycopg.connect(database["app"], autocommit=True) as conn:
        for n, subject in enumerate(odd):
            _state(conn, subject, f"evt-{n}", since + timedelta(seconds=n))
        conn.execute(
            "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at)"
            " VALUES (%s, 'THIRD_PARTY_SHARING', true, %s, 'evt-x', 'OPT_OUT', %s)",
            (odd[0], since + timedelta(days=1), since),
        )
        scopes = frozenset({Scope.EMAIL_MARKETING, Scope.THIRD_PARTY_SHARING})
        customers = frozenset({Identifier.CUSTOMER_ID})
        found = BatchReader(Destination("x", scopes, customers, customers), None).next(conn, "", 100)
    assert found is not None
    batch, rows = found
    expected = {s: (("EMAIL_MARKETING",), to_millis(since + timedelta(seconds=n))) for n, s in enumerate(odd)}
    expected[odd[0]] = (("EMAIL_MARKETING", "THIRD_PARTY_SHARING"), to_millis(since + timedelta(days=1)))
    assert {subject: (scopes, millis) for subject, scopes, millis, _, _ in rows} == expected
    assert {row[0]: row[4] for row in rows}[odd[0]] == ("evt-0", "evt-x")
    assert len(rows) == len(odd)
    assert batch.hi == rows[-1][0]


def test_a_run_renews_its_snapshot_and_sends_each_subject_once(
    base_settings: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reading snapshot renewed after every batch (``SNAPSHOT_SECONDS`` 0: the main
    thread finishes each batch before the next is read): every subject sent once, with its
    audit row, and the run finished."""
    path = tmp_path / "destinations.toml"
    path.write_text(
        """
[[destinations]]
name = "customers"
kind = "partners"
scopes = ["EMAIL_MARKETING"]
identifiers = ["customer_id"]
requires_one_of = ["customer_id"]
"""
    )
    cfg = isolated_settings(base_settings, destinations_file=path)
    monkeypatch.setattr(run, "SNAPSHOT_SECONDS", 0.0)
    since = datetime(2026, 11, 1, tzinfo=UTC)
    subjects = [f"cust:C-{n:02d}" for n in range(11)]
    with psycopg.connect(cfg.dsn(), autocommit=True) as conn:
        for n, subject in enumerate(subjects):
            _state(conn, subject, f"evt-{n:02d}", since)
    report = run.Replayer(cfg, "customers", batch_size=2).run()
    assert (report.sent, report.skipped, report.stopped) == (len(subjects), 0, False)
    commands = read_topic(cfg, cfg.suppress_topic("customers"), expect=len(subjects))
    assert sorted(f"cust:{c.decoded()['customer_id']}" for c in commands) == subjects
    with psycopg.connect(cfg.dsn()) as conn:
        audited = conn.execute(
            "SELECT event_id, command_id FROM audit_events WHERE step = 'replayed' ORDER BY 1"
        ).fetchall()
        finished = conn.execute("SELECT finished_at IS NOT NULL, cursor_subject FROM replay_runs").fetchall()
    assert audited == [
        (f"evt-{n:02d}", replay_command_id(report.replay_id, "customers", s)) for n, s in enumerate(subjects)
    ]
    assert finished == [(True, subjects[-1])]


def test_a_waiting_reading_transaction_outlives_the_idle_timeout(
    database: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the reading thread waits for the main thread (a throttled run), it keeps its
    snapshot's transaction alive: a server's ``idle_in_transaction_session_timeout`` shorter
    than the wait does not end it."""
    monkeypatch.setattr(run, "KEEPALIVE_SECONDS", 0.1)
    done, stop = threading.Event(), threading.Event()
    with psycopg.connect(database["app"], autocommit=True) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = '400ms'")
        with conn.transaction():
            before = conn.execute("SELECT txid_current()").fetchone()
            timer = threading.Timer(1.5, done.set)
            timer.start()
            run._idle(conn, done, stop)
            # Ended by the timeout, the session would be gone and this would raise.
            assert conn.execute("SELECT txid_current()").fetchone() == before
