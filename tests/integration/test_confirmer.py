"""The confirmer against the real broker and database (issue: confirmation worker).

Intake runs for real to create requests and commands; the tests then play the
connectors by producing SuppressionAck messages by hand.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
from prometheus_client import REGISTRY

from services.common.avro import default_codec
from services.common.clock import ManualClock
from services.common.kafka import make_admin, make_producer
from services.common.request_status import request_status
from services.common.settings import Settings
from services.confirmer.overdue import list_overdue
from services.confirmer.service import run as run_confirmer
from services.domain.planning import command_id
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from tests.support.pipeline import ADDRESS, isolated_settings, read_topic, running, wait_committed, wait_until

pytestmark = pytest.mark.integration

# (scopes, extra fields, expected destinations)
PLAN: list[tuple[list[str], dict[str, Any], set[str]]] = [
    (["EMAIL_MARKETING"], {}, {"email_provider"}),
    (["POSTAL_MARKETING"], {"postal_address": ADDRESS, "email": None}, {"mail_house"}),
    (["ALL"], {"postal_address": ADDRESS}, {"email_provider", "mail_house", "third_party_sharing"}),
    (["ALL"], {}, {"email_provider", "third_party_sharing"}),
    (["THIRD_PARTY_SHARING"], {"phone": "+14155550100"}, {"third_party_sharing"}),
]


def _publish(
    cfg: Settings,
    count: int,
    plan: list[tuple[list[str], dict[str, Any], set[str]]] = PLAN,
) -> dict[str, set[str]]:
    """Publish ``count`` requests cycling through ``plan``; return event id -> destinations."""
    publisher = RequestPublisher(cfg)
    expected: dict[str, set[str]] = {}
    prepared = []
    for i in range(count):
        scopes, extra, dests = plan[i % len(plan)]
        fields = {
            "event_id": f"evt-{uuid.uuid4()}",
            "email": f"user{i}@example.com",
            "scopes": scopes,
            "source": "API",
            **extra,
        }
        prepared.append(publisher.prepare({k: v for k, v in fields.items() if v is not None}))
        expected[str(fields["event_id"])] = dests
    publisher.publish(prepared)
    return expected


def _commands(cfg: Settings, event_ids: list[str]) -> list[tuple[str, str, str]]:
    """(command_id, event_id, destination) of the requests, once intake recorded them all."""

    def recorded() -> bool:
        with psycopg.connect(cfg.dsn()) as conn:
            row = conn.execute(
                "SELECT count(DISTINCT event_id) FROM destination_status WHERE event_id = ANY(%s)",
                (event_ids,),
            ).fetchone()
        return row is not None and row[0] == len(event_ids)

    wait_until(recorded, timeout=120, message="intake recorded the requests")
    with psycopg.connect(cfg.dsn()) as conn:
        rows = conn.execute(
            "SELECT command_id, event_id, destination FROM destination_status WHERE event_id = ANY(%s)",
            (event_ids,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _send_acks(
    producer: Producer,
    cfg: Settings,
    commands: list[tuple[str, str, str]],
    status: str = "APPLIED",
    detail: str | None = None,
    acked_at: datetime | None = None,
) -> None:
    codec = default_codec()
    for cid, event_id, dest in commands:
        producer.produce(
            cfg.acks_topic,
            key=event_id,
            value=codec.encode(
                "SuppressionAck",
                {
                    "command_id": cid,
                    "request_id": event_id,
                    "destination": dest,
                    "status": status,
                    "detail": detail,
                    "acked_at": acked_at or datetime.now(UTC),
                },
            ),
        )
    assert producer.flush(30) == 0


def _states(cfg: Settings, event_ids: list[str]) -> Counter[str]:
    with psycopg.connect(cfg.dsn()) as conn:
        rows = conn.execute("SELECT state FROM requests WHERE event_id = ANY(%s)", (event_ids,)).fetchall()
    return Counter(r[0] for r in rows)


def _confirm_main(clock: ManualClock | None = None) -> Any:
    def main(cfg: Settings, stop: threading.Event) -> None:
        run_confirmer(cfg, stop, clock)

    return main


def test_every_request_confirmed_exactly_once_naming_exactly_its_destinations(
    base_settings: dict[str, Any],
) -> None:
    cfg = isolated_settings(base_settings)
    expected = _publish(cfg, 1000)
    ids = list(expected)
    producer = make_producer(cfg)
    with running(run_intake, cfg, "intake"), running(_confirm_main(), cfg, "confirmer"):
        commands = _commands(cfg, ids)
        assert len(commands) == sum(len(d) for d in expected.values())
        # Out of order: a stale REJECTED after the success must not undo it; duplicates too.
        started = datetime.now(UTC)
        _send_acks(producer, cfg, commands[::2], "ALREADY_SUPPRESSED")
        _send_acks(producer, cfg, commands[::-1], "APPLIED")
        _send_acks(producer, cfg, commands[:200], "REJECTED", detail="stale attempt")
        confirmations = read_topic(cfg, cfg.confirmations_topic, expect=len(ids), timeout=120)
        # Everything again, after completion: still nothing more.
        _send_acks(producer, cfg, commands, "APPLIED")
        wait_committed(cfg, {cfg.group("confirmer"): (cfg.acks_topic,)})  # consumed the duplicates
        again = read_topic(cfg, cfg.confirmations_topic, expect=len(ids))

    assert len(confirmations) == len(ids)
    assert len(again) == len(ids)
    decoded = [r.decoded() for r in again]
    assert Counter(d["request_id"] for d in decoded) == Counter(ids)  # each exactly once
    by_command = {(e, d) for _, e, d in commands}
    status_of = {
        (e, d): ("ALREADY_SUPPRESSED" if i % 2 == 0 else "APPLIED") for i, (_, e, d) in enumerate(commands)
    }
    for record, raw in zip(decoded, again, strict=True):
        rid = record["request_id"]
        assert raw.key == rid.encode()
        assert {d["destination"] for d in record["destinations"]} == expected[rid]
        for d in record["destinations"]:
            assert (rid, d["destination"]) in by_command
            assert d["status"] == status_of[(rid, d["destination"])]
            assert d["applied_at"] >= started - timedelta(seconds=1)
        assert record["confirmed_at"] >= record["requested_at"]
        if expected[rid] == {"mail_house"}:  # no email: the postal address is the contact
            assert record["notify_email"] is None
            assert record["notify_postal_address"]["postal_code"] == "SW1Y 4JH"
        else:
            assert record["notify_email"].endswith("@example.com")
            assert record["notify_postal_address"] is None
    assert _states(cfg, ids) == Counter({"CONFIRMED": len(ids)})


def test_rejected_destination_needs_attention_and_is_never_confirmed(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(base_settings, sweep_interval_seconds=0.5)
    expected = _publish(cfg, 4, [PLAN[2]])  # three destinations each
    ids = list(expected)
    producer = make_producer(cfg)
    with running(run_intake, cfg, "intake"), running(_confirm_main(), cfg, "confirmer"):
        commands = _commands(cfg, ids)
        mail = [c for c in commands if c[2] == "mail_house"]
        _send_acks(producer, cfg, [c for c in commands if c[2] != "mail_house"])
        _send_acks(producer, cfg, mail, "REJECTED", detail="address undeliverable")
        wait_until(lambda: _states(cfg, ids) == Counter({"NEEDS_ATTENTION": 4}), message="needs attention")

        # The gauge counts the whole (per-session) database: earlier tests' rows count too, so
        # ">= 4" could hold before any sweep saw ours. It must match the database, ours included.
        def gauge_counts_ours() -> bool:
            with psycopg.connect(cfg.dsn()) as conn:
                row = conn.execute("SELECT count(*) FROM requests WHERE state = 'NEEDS_ATTENTION'").fetchone()
            in_db = int(row[0]) if row else 0
            return in_db >= 4 and REGISTRY.get_sample_value("optout_requests_needing_attention") == in_db

        wait_until(gauge_counts_ours, message="needs-attention gauge")
        wait_committed(cfg, {cfg.group("confirmer"): (cfg.acks_topic,)})  # consumed the acks
        assert read_topic(cfg, cfg.confirmations_topic, settle=2.0) == []
        status = request_status(cfg, ids[0])
        assert status is not None and status["state"] == "NEEDS_ATTENTION"
        rejected = [d for d in status["destinations"] if d["status"] == "REJECTED"]
        assert [(d["destination"], d["detail"]) for d in rejected] == [
            ("mail_house", "address undeliverable")
        ]

        # A re-sent command succeeds later: the request is confirmed after all, once.
        _send_acks(producer, cfg, mail[:1], "APPLIED")
        confirmations = read_topic(cfg, cfg.confirmations_topic, expect=1)
    assert [r.decoded()["request_id"] for r in confirmations] == [mail[0][1]]
    assert _states(cfg, ids) == Counter({"NEEDS_ATTENTION": 3, "CONFIRMED": 1})


def test_unknown_mismatched_and_undecodable_acks_go_to_the_dlq_with_reason(
    base_settings: dict[str, Any],
) -> None:
    cfg = isolated_settings(base_settings)
    expected = _publish(cfg, 2, [PLAN[0]])
    ids = list(expected)
    producer = make_producer(cfg)
    with running(run_intake, cfg, "intake"), running(_confirm_main(), cfg, "confirmer"):
        commands = _commands(cfg, ids)
        ghost = command_id("evt-never-recorded", "email_provider")
        _send_acks(producer, cfg, [(ghost, "evt-never-recorded", "email_provider")])
        _send_acks(
            producer,
            cfg,
            [(commands[0][0], ids[1] if commands[0][1] == ids[0] else ids[0], "email_provider")],
        )
        producer.produce(cfg.acks_topic, key="junk", value=b"\x00not avro")
        producer.flush(10)
        # The good ack of the other request in the same stream still confirms it.
        _send_acks(producer, cfg, [commands[1]])
        dlq = read_topic(cfg, cfg.acks_dlq_topic, expect=3)
        confirmations = read_topic(cfg, cfg.confirmations_topic, expect=1)
    reasons = Counter(r.headers["optout.dlq.reason"] for r in dlq)
    assert reasons == Counter({"unknown_command": 1, "ack_mismatch": 1, "undecodable": 1})
    unknown = next(r for r in dlq if r.headers["optout.dlq.reason"] == "unknown_command")
    assert unknown.key == b"evt-never-recorded"
    assert ghost in unknown.headers["optout.dlq.detail"]
    assert unknown.headers["optout.dlq.topic"] == cfg.acks_topic
    assert unknown.decoded()["command_id"] == ghost  # the original bytes, untouched
    assert [r.decoded()["request_id"] for r in confirmations] == [commands[1][1]]
    assert _states(cfg, ids) == Counter({"PENDING": 1, "CONFIRMED": 1})


def _set_max_message_bytes(cfg: Settings, topic: str, value: int) -> None:
    resource = ConfigResource(
        "TOPIC",
        topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin = make_admin(cfg)  # kept alive until the futures resolve
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)

    # The controller has the change; the broker applies it when it replays the metadata, which
    # lags on a busy machine (a fresh-clone run's confirmer delivered "too large" confirmations
    # a moment after the call returned). Wait until the broker itself reports the new value.
    def applied() -> bool:
        described = admin.describe_configs([ConfigResource("TOPIC", topic)])
        [configs] = [f.result(30) for f in described.values()]
        return configs["max.message.bytes"].value == str(value)

    wait_until(applied, timeout=30, message=f"the broker to apply max.message.bytes={value} on {topic}")


def test_a_failed_confirmation_delivery_is_retried_not_skipped(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(base_settings, retry_max_backoff_seconds=1.0)
    expected = _publish(cfg, 3, [PLAN[3]])  # email_provider + third_party_sharing
    ids = list(expected)
    producer = make_producer(cfg)
    # The broker refuses every confirmation (too large for the topic) until we relent.
    _set_max_message_bytes(cfg, cfg.confirmations_topic, 16)
    retries = {"service": "confirmer", "operation": "batch"}
    before = REGISTRY.get_sample_value("optout_retries_total", retries) or 0.0
    with running(run_intake, cfg, "intake"), running(_confirm_main(), cfg, "confirmer"):
        commands = _commands(cfg, ids)
        _send_acks(producer, cfg, commands)
        wait_until(
            lambda: (REGISTRY.get_sample_value("optout_retries_total", retries) or 0) >= before + 2,
            message="the batch failed and was retried",
        )
        # Nothing was committed while the confirmations could not be delivered.
        with psycopg.connect(cfg.dsn()) as conn:
            pending = conn.execute(
                "SELECT count(*) FROM destination_status WHERE event_id = ANY(%s) AND status = 'PENDING'",
                (ids,),
            ).fetchone()
        assert pending == (len(commands),)
        assert _states(cfg, ids) == Counter({"PENDING": 3})
        _set_max_message_bytes(cfg, cfg.confirmations_topic, 1_048_588)
        confirmations = read_topic(cfg, cfg.confirmations_topic, expect=3)
        wait_until(lambda: _states(cfg, ids) == Counter({"CONFIRMED": 3}), message="confirmed")
    assert Counter(r.decoded()["request_id"] for r in confirmations) == Counter(ids)


def test_sweeper_reissues_unacked_commands_and_marks_requests_overdue(
    base_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = isolated_settings(
        base_settings, reissue_base_seconds=60, reissue_cap_seconds=3600, sweep_interval_seconds=10
    )
    clock = ManualClock(datetime.now(UTC))
    expected = _publish(cfg, 2, [PLAN[0]])  # EMAIL_MARKETING: due 48 hours after the request
    slow, done = list(expected)
    producer = make_producer(cfg)

    def issue_count(event_id: str) -> int:
        with psycopg.connect(cfg.dsn()) as conn:
            row = conn.execute(
                "SELECT issue_count FROM destination_status WHERE event_id = %s", (event_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    with running(run_intake, cfg, "intake"), running(_confirm_main(clock), cfg, "confirmer"):
        commands = {c[1]: c for c in _commands(cfg, [slow, done])}
        first = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=2)
        assert issue_count(slow) == 1
        clock.advance(timedelta(seconds=90))  # past the first re-send interval (60 s)
        wait_until(lambda: issue_count(slow) == 2, message="re-issued")
        resent = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=4)
        assert issue_count(done) == 2

        _send_acks(producer, cfg, [commands[done]])
        wait_until(lambda: _states(cfg, [done]) == Counter({"CONFIRMED": 1}), message="confirmed")
        with psycopg.connect(cfg.dsn()) as conn:
            assert [r.event_id for r in list_overdue(conn, clock.now()) if r.event_id in expected] == []
        clock.advance(timedelta(hours=49))  # past due_at (48 h)
        wait_until(lambda: issue_count(slow) == 3, message="re-issued again")
        with psycopg.connect(cfg.dsn()) as conn:
            row = conn.execute("SELECT overdue_at FROM requests WHERE event_id = %s", (slow,)).fetchone()
            late = [r for r in list_overdue(conn, clock.now()) if r.event_id in expected]
            real_now = [r for r in list_overdue(conn, datetime.now(UTC)) if r.event_id in expected]
            nearing = [
                r
                for r in list_overdue(conn, datetime.now(UTC), timedelta(hours=49))
                if r.event_id in expected
            ]

        with psycopg.connect(cfg.dsn()) as conn:
            audited = conn.execute(
                "SELECT step, destination, detail FROM audit_events WHERE event_id = %s ORDER BY id", (slow,)
            ).fetchall()

    # The audit trail: recorded, sent, then each re-send by the sweeper with its issue count.
    assert [(s, d) for s, d, _ in audited] == [
        ("recorded", None),
        ("command_sent", "email_provider"),
        ("command_resent", "email_provider"),
        ("command_resent", "email_provider"),
    ]
    assert [d for _, _, d in audited][2:] == [f"{commands[slow][0]} issue 2", f"{commands[slow][0]} issue 3"]
    assert row is not None and row[0] == clock.now()
    assert [(r.event_id, r.state, r.waiting_on) for r in late] == [
        (slow, "PENDING", ("email_provider:PENDING",))
    ]
    assert late[0].overdue(clock.now()) and late[0].deadline_rule == "mailbox-providers-48h"
    assert real_now == []  # only the injected clock moved
    assert [r.event_id for r in nearing] == [slow]

    decoded = [r.decoded() for r in resent]
    assert {r.decoded()["command_id"] for r in first} == {commands[slow][0], commands[done][0]}
    slow_sends = [d for d in decoded if d["request_id"] == slow]
    assert [d["command_id"] for d in slow_sends] == [commands[slow][0]] * 2  # same command id
    issued = sorted(d["issued_at"] for d in slow_sends)
    assert issued[1] - issued[0] >= timedelta(seconds=60)
    assert slow_sends[0]["email"] == slow_sends[1]["email"]

    # `optout overdue` (system clock): not overdue yet for real, but due within 49 hours.
    from services.cli.main import main
    from services.common.settings import settings

    monkeypatch.setenv("OPTOUT_DATABASE_URL", cfg.dsn())
    monkeypatch.setenv("OPTOUT_LOG_LEVEL", "warning")
    settings.cache_clear()
    try:
        capsys.readouterr()
        assert main(["overdue", "--json", "--within", "49"]) == 0
        listed = {r["event_id"]: r for r in json.loads(capsys.readouterr().out)}
        assert main(["overdue"]) == 0
        table = capsys.readouterr().out
    finally:
        settings.cache_clear()
    assert slow in listed and done not in listed
    assert listed[slow]["overdue"] is False and listed[slow]["waiting_on"] == ["email_provider:PENDING"]
    assert slow not in table


def _issue_count(cfg: Settings, event_id: str, destination: str = "email_provider") -> int:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute(
            "SELECT issue_count FROM destination_status WHERE event_id = %s AND destination = %s",
            (event_id, destination),
        ).fetchone()
    return int(row[0]) if row else 0


def _commands_of_a_gone_destination(cfg: Settings, template: str, count: int, destination: str) -> list[str]:
    """``count`` pending commands of ``destination`` (not in the contract), each of its own
    request (a copy of ``template``), sent a day ago: older than every other command."""
    ghosts = [f"evt-ghost-{uuid.uuid4()}" for _ in range(count)]
    with psycopg.connect(cfg.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE ghost AS SELECT * FROM requests WHERE event_id = %s", (template,))
        for ghost in ghosts:
            conn.execute("UPDATE ghost SET event_id = %s", (ghost,))
            conn.execute("INSERT INTO requests SELECT * FROM ghost")
            conn.execute(
                "INSERT INTO destination_status (command_id, event_id, destination, first_issued_at,"
                " last_issued_at) VALUES (%s, %s, %s, now() - interval '1 day', now() - interval '1 day')",
                (f"cmd-{ghost}", ghost, destination),
            )
    return ghosts


def test_sweeper_is_not_starved_by_commands_of_a_destination_that_no_longer_exists(
    base_settings: dict[str, Any],
) -> None:
    cfg = isolated_settings(
        base_settings,
        reissue_base_seconds=60,
        reissue_cap_seconds=3600,
        sweep_interval_seconds=10,
        sweep_batch_size=5,
    )
    clock = ManualClock(datetime.now(UTC))
    [known] = list(_publish(cfg, 1, [PLAN[0]]))  # one email_provider command
    with running(run_intake, cfg, "intake"):
        _commands(cfg, [known])
    gone = f"gone_{uuid.uuid4().hex[:8]}"  # its own label: the registry is process-wide
    ghosts = _commands_of_a_gone_destination(cfg, known, cfg.sweep_batch_size, gone)

    def unknown_gauge() -> float | None:
        return REGISTRY.get_sample_value("optout_pending_commands_unknown_destination", {"destination": gone})

    with running(_confirm_main(clock), cfg, "confirmer"):
        clock.advance(timedelta(seconds=90))  # past the first re-send interval (60 s)
        wait_until(lambda: _issue_count(cfg, known) == 2, message="the known destination's command re-sent")
        sent = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=2)
        wait_until(lambda: unknown_gauge() == len(ghosts), message="the unknown destination reported")
    assert [r.decoded()["request_id"] for r in sent] == [known, known]  # intake's send, the re-send
    assert [_issue_count(cfg, g, gone) for g in ghosts] == [1] * len(ghosts)  # reported, never re-sent


def test_sweeper_leaves_resolved_requests_alone(base_settings: dict[str, Any]) -> None:
    """A request someone resolved (``optout resolve``) is closed: its commands still pending
    are not re-sent (after purge they carry no identifier) and it is never marked overdue."""
    cfg = isolated_settings(
        base_settings, reissue_base_seconds=60, reissue_cap_seconds=3600, sweep_interval_seconds=10
    )
    clock = ManualClock(datetime.now(UTC))
    open_one, resolved = list(_publish(cfg, 2, [PLAN[0]]))
    with running(run_intake, cfg, "intake"):
        _commands(cfg, [open_one, resolved])
    with psycopg.connect(cfg.dsn()) as conn:
        conn.execute(
            "UPDATE requests SET state = 'NEEDS_ATTENTION', resolved_at = now(),"
            " resolution_note = 'handled by phone' WHERE event_id = %s",
            (resolved,),
        )
    with running(_confirm_main(clock), cfg, "confirmer"):
        clock.advance(timedelta(hours=49))  # past the re-send interval and past due (48 h)
        wait_until(lambda: _issue_count(cfg, open_one) == 2, message="the open request's command re-sent")
        with psycopg.connect(cfg.dsn()) as conn:
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT overdue_at IS NOT NULL FROM requests WHERE event_id = %s", (open_one,)
                    ).fetchone()
                    == (True,)
                ),
                message="the open request marked overdue",
            )
            overdue = conn.execute(
                "SELECT overdue_at FROM requests WHERE event_id = %s", (resolved,)
            ).fetchone()
    assert _issue_count(cfg, resolved) == 1  # intake's send only
    assert overdue == (None,)


def test_sweeper_recovers_from_a_dropped_database_connection(
    base_settings: dict[str, Any], database: dict[str, str]
) -> None:
    if not database.get("superuser"):
        pytest.skip("needs a local superuser to end the confirmer's session")
    cfg = isolated_settings(
        base_settings, reissue_base_seconds=60, reissue_cap_seconds=3600, sweep_interval_seconds=10
    )
    clock = ManualClock(datetime.now(UTC))
    [event] = list(_publish(cfg, 1, [PLAN[0]]))
    with running(run_intake, cfg, "intake"):
        _commands(cfg, [event])
    retries = {"service": "confirmer", "operation": "sweep"}
    before = REGISTRY.get_sample_value("optout_retries_total", retries) or 0.0
    # Intake has stopped: the only optout session left on this database is the confirmer's.
    sessions = (
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'optout'"
        " AND pid <> pg_backend_pid()"
    )

    with psycopg.connect(database["superuser"], autocommit=True) as su:

        def confirmer_sessions() -> set[int]:
            return {int(r[0]) for r in su.execute(sessions, (database["name"],)).fetchall()}

        with running(_confirm_main(clock), cfg, "confirmer"):
            wait_until(lambda: bool(confirmer_sessions()), message="the confirmer's first sweep connected")
            dropped = confirmer_sessions()
            su.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (sorted(dropped),))

            def resent() -> bool:
                clock.advance(timedelta(seconds=90))  # a sweep is due on every check
                return _issue_count(cfg, event) >= 2

            wait_until(resent, message="the sweeper reconnected and re-sent the command")
            reconnected = confirmer_sessions()
    assert (REGISTRY.get_sample_value("optout_retries_total", retries) or 0.0) >= before + 1
    assert reconnected and not reconnected & dropped
