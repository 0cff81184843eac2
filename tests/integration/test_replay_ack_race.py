"""An ack that beats its command's audit row (services/common/audit.py, "Acks that beat their
command's audit row"): the replayer writes a batch's ``replayed`` rows after its delivery
reports, the confirmer writes an ack's ``acknowledged`` row by joining them, and a connector
can ack first. Whichever of the two comes second writes the row, under a lock they share.

Each interleaving is driven directly, in a fixed order: the confirmer's store functions (as
``ConfirmerStep.submit`` runs them: one transaction, pipeline mode) and the replayer's audit
stage (``Replayer._audit``). The same for ``optout
reconcile``'s ``reconcile_resent`` rows, which it writes after its commands are delivered."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.common import audit
from services.common.contract import AckStatus
from services.common.settings import Settings
from services.confirmer.outcomes import Ack
from services.confirmer.store import apply_acks
from services.replay.plan import replay_command_id
from services.replay.run import Batch, BatchResult, Prepared, Replayer
from tests.support.pipeline import wait_until

pytestmark = pytest.mark.integration

RUN = "run-1"
DEST = "email_provider"
SUBJECTS = ["cust:a", "cust:b", "cust:c"]
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DETAIL = "applied for ada@example.com"  # a provider's detail: redacted in the trail


def _setup(database: dict[str, str]) -> Settings:
    """Three suppressed subjects (requests evt-0..2) and the run's ``replay_runs`` row."""
    with psycopg.connect(database["app"], autocommit=True) as conn:
        for n, subject in enumerate(SUBJECTS):
            conn.execute(
                "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action,"
                " updated_at) VALUES (%s, 'EMAIL_MARKETING', true, %s, %s, 'OPT_OUT', %s)",
                (subject, AT, f"evt-{n}", AT),
            )
        conn.execute(
            "INSERT INTO replay_runs (replay_id, destination, started_at) VALUES (%s, %s, %s)",
            (RUN, DEST, AT),
        )
    return Settings(database_url=database["app"], admin_database_url=database["admin"])


def _command(subject: str) -> str:
    return replay_command_id(RUN, DEST, subject)


def _acks(subjects: Sequence[str], status: AckStatus = AckStatus.APPLIED) -> list[Ack]:
    return [Ack(_command(s), f"replay:{RUN}", DEST, status, DETAIL, AT) for s in subjects]


@contextlib.contextmanager
def _confirming(conn: psycopg.Connection[Any], acks: Sequence[Ack]) -> Iterator[None]:
    """The confirmer's recording of ``acks`` (``ConfirmerStep.submit``'s transaction): its
    statements are run when this yields, the commit when it returns."""
    with conn.pipeline() as pipeline, conn.transaction():
        outcome = apply_acks(conn, acks, AT)
        audit.record_reissue_acks(
            conn, [(a.command_id, a.destination, a.status.value, a.detail) for a in acks], AT
        )
        pipeline.sync()
        assert outcome.replayed == len(acks) and not outcome.unknown
        yield


def _confirm(database: dict[str, str], acks: Sequence[Ack]) -> None:
    with psycopg.connect(database["app"]) as conn, _confirming(conn, acks):
        pass


def _replay_audit(cfg: Settings, database: dict[str, str]) -> None:
    """The replayer's audit stage for a batch of ``SUBJECTS`` (requests evt-0..2)."""
    with psycopg.connect(database["app"], autocommit=True) as writer:
        keys = [_command(s) for s in SUBJECTS]
        events = [(f"evt-{n}",) for n in range(len(SUBJECTS))]
        prepared = Prepared(keys, [b""] * len(keys), [], AT, BatchResult(len(keys), 0, len(keys)), events)
        conns: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        conns.put(writer)
        Replayer(cfg, DEST)._audit(conns, RUN, Batch("cust:", SUBJECTS[-1]), prepared)


def _trail(database: dict[str, str]) -> list[tuple[str, str, str | None, str | None]]:
    """(event id, step, status, detail) of every row with a command id."""
    with psycopg.connect(database["app"]) as conn:
        rows = conn.execute(
            "SELECT event_id, step, status, detail FROM audit_events WHERE command_id IS NOT NULL"
            " ORDER BY event_id, id"
        ).fetchall()
    return [(str(r[0]), str(r[1]), r[2], r[3]) for r in rows]


def _expected(acknowledged: Sequence[str]) -> list[tuple[str, str, str | None, str | None]]:
    """``replayed`` for every subject, then ``acknowledged`` (APPLIED, the redacted detail)."""
    out: list[tuple[str, str, str | None, str | None]] = []
    for n, subject in enumerate(SUBJECTS):
        command = _command(subject)
        out.append((f"evt-{n}", "replayed", None, f"replayed to {DEST} ({RUN}): command {command}"))
        if subject in acknowledged:
            detail = f"replay command {command}: {audit.safe_detail(DETAIL)}"
            out.append((f"evt-{n}", "acknowledged", "APPLIED", detail))
    return out


def _pending(database: dict[str, str]) -> int:
    with psycopg.connect(database["app"]) as conn:
        row = conn.execute("SELECT count(*) FROM replay_commands WHERE audit_pending").fetchone()
    return int(row[0]) if row else -1


def test_replayed_rows_then_ack_the_confirmer_writes_it(database: dict[str, str]) -> None:
    """The usual order: the ``replayed`` rows are committed before the ack is recorded."""
    cfg = _setup(database)
    _replay_audit(cfg, database)
    _confirm(database, _acks(SUBJECTS))
    assert _trail(database) == _expected(SUBJECTS)


def test_an_ack_recorded_before_the_replayed_rows_is_written_by_the_replayer(
    database: dict[str, str],
) -> None:
    """The connector was faster: two acks committed before the batch's ``replayed`` rows (the
    confirmer's join found nothing). The replayer writes their ``acknowledged`` rows after the
    ``replayed`` ones; the same batch audited again (a resumed run) writes none twice, nor does
    the same ack redelivered to the confirmer."""
    cfg = _setup(database)
    _confirm(database, _acks(SUBJECTS[:2]))
    assert _trail(database) == []
    _replay_audit(cfg, database)
    assert _trail(database) == _expected(SUBJECTS[:2])
    assert _pending(database) == 0  # migration 0020's flag, set by the confirmer, cleared
    _confirm(database, _acks(SUBJECTS))  # the first two again, and the third
    _replay_audit(cfg, database)  # the batch re-done after a kill: its replayed rows twice
    trail = _trail(database)
    assert [row for row in trail if row[1] == "acknowledged"] == [
        row for row in _expected(SUBJECTS) if row[1] == "acknowledged"
    ]
    assert _pending(database) == 0


def test_an_ack_whose_transaction_spans_the_replayed_rows_is_written_by_the_replayer(
    database: dict[str, str],
) -> None:
    """The confirmer recorded the ack (its join found no ``replayed`` row) but has not
    committed yet when the replayer commits the batch's ``replayed`` rows: the replayer waits
    for the confirmer's commit, then writes the ``acknowledged`` row."""
    cfg = _setup(database)
    with psycopg.connect(database["app"]) as confirmer, psycopg.connect(database["app"]) as observer:
        with _confirming(confirmer, _acks(SUBJECTS)):
            replaying = threading.Thread(target=_replay_audit, args=(cfg, database))
            replaying.start()

            def replayer_waits_or_is_done() -> bool:
                row = observer.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone()
                observer.rollback()
                return not replaying.is_alive() or bool(row and row[0])

            wait_until(replayer_waits_or_is_done, timeout=30, message="the replayer's audit stage")
            replayed = observer.execute(
                "SELECT count(*) FROM audit_events WHERE step = 'replayed'"
            ).fetchone()
            observer.rollback()
            assert replayed == (len(SUBJECTS),)  # committed while the confirmer's transaction is open
        replaying.join(timeout=30)
        assert not replaying.is_alive()
    assert _trail(database) == _expected(SUBJECTS)
    assert _pending(database) == 0


def test_an_ack_of_a_reconcile_command_recorded_before_its_row_is_written_by_the_reconcile(
    database: dict[str, str],
) -> None:
    """``optout reconcile`` writes its ``reconcile_resent`` rows after its commands are
    delivered: an ack recorded before (the connector's ``connector_applied`` row, then the
    confirmer, whose join found nothing) is written by the reconcile from the connector's
    dedupe store, once; the ack redelivered to the confirmer adds nothing."""
    _setup(database)
    command = "reconcile-command-1"
    request = f"reconcile:{DEST}:{'0' * 64}:0"
    with psycopg.connect(database["app"]) as conn:
        conn.execute(
            "INSERT INTO connector_applied (destination, command_id, request_id, status, detail, applied_at)"
            " VALUES (%s, %s, %s, 'APPLIED', %s, %s)",
            (DEST, command, request, DETAIL, AT),
        )
    ack = (command, DEST, "APPLIED", DETAIL)
    with psycopg.connect(database["app"]) as conn, conn.transaction():
        audit.record_reissue_acks(conn, [ack], AT)  # before the reconcile_resent row: nothing
    with psycopg.connect(database["app"]) as conn:
        with conn.transaction():
            audit.record_reissued(
                conn,
                audit.Reissue.RECONCILE,
                DEST,
                ["EMAIL_MARKETING"],
                [(command, "cust:a")],
                AT,
                "reconcile",
            )
        assert (
            audit.record_applied_reissue_acks(conn, DEST, [command, "never-applied"], AT + timedelta(1)) == 1
        )
    with psycopg.connect(database["app"]) as conn, conn.transaction():
        audit.record_reissue_acks(conn, [ack], AT)
    assert _trail(database) == [
        ("evt-0", "reconcile_resent", None, f"reconcile: command {command}"),
        ("evt-0", "acknowledged", "APPLIED", f"reconcile command {command}: {audit.safe_detail(DETAIL)}"),
    ]
