"""Intake against the real broker and database (issue: intake)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message, Producer
from psycopg import sql

from services.common.avro import default_codec
from services.common.kafka import make_producer
from services.domain.planning import command_id
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from tests.support.pipeline import ADDRESS, isolated_settings, read_topic, running, wait_committed, wait_until

pytestmark = pytest.mark.integration


def _event(i: int, scopes: list[str], **extra):
    fields = {
        "event_id": f"evt-{uuid.uuid4()}",
        "email": f"user{i}@example.com",
        "scopes": scopes,
        "source": "API",
    }
    fields.update(extra)
    return fields


def _count_rows(dsn: str, event_ids: list[str]) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        r = conn.execute("SELECT count(*) FROM requests WHERE event_id = ANY(%s)", (event_ids,)).fetchone()
        d = conn.execute(
            "SELECT count(*) FROM destination_status WHERE event_id = ANY(%s)", (event_ids,)
        ).fetchone()
    assert r and d
    return r[0], d[0]


def test_mixed_scopes_fan_out_exactly_the_right_commands(base_settings):
    cfg = isolated_settings(base_settings)
    publisher = RequestPublisher(cfg)
    plan = [
        (["EMAIL_MARKETING"], {}, {"email_provider"}),
        (["POSTAL_MARKETING"], {"postal_address": ADDRESS}, {"mail_house"}),
        (["THIRD_PARTY_SHARING"], {"phone": "+14155550100"}, {"third_party_sharing"}),
        (["ALL"], {"postal_address": ADDRESS}, {"email_provider", "mail_house", "third_party_sharing"}),
        (["ALL"], {}, {"email_provider", "third_party_sharing"}),
        (["EMAIL_MARKETING", "THIRD_PARTY_SHARING"], {}, {"email_provider", "third_party_sharing"}),
    ]
    events = []
    expected: dict[str, set[str]] = {}
    for i in range(60):
        scopes, extra, dests = plan[i % len(plan)]
        fields = _event(i, scopes, **extra)
        events.append(publisher.prepare(fields))
        expected[fields["event_id"]] = dests
    publisher.publish(events)

    with running(run_intake, cfg, "intake"):
        per_dest: dict[str, list] = {}
        total = sum(len(v) for v in expected.values())
        got = 0
        for dest in ("email_provider", "mail_house", "third_party_sharing"):
            want = sum(1 for v in expected.values() if dest in v)
            per_dest[dest] = read_topic(cfg, cfg.suppress_topic(dest), expect=want)
            got += len(per_dest[dest])
    assert got == total
    for dest, records in per_dest.items():
        decoded = [r.decoded() for r in records]
        assert sorted(d["request_id"] for d in decoded) == sorted(e for e, v in expected.items() if dest in v)
        for d, r in zip(decoded, records, strict=True):
            assert d["destination"] == dest
            assert d["command_id"] == command_id(d["request_id"], dest)
            assert r.key == d["request_id"].encode()
            if dest == "third_party_sharing":
                assert d["email"] is None and d["phone"] is None and d["email_sha256"]
    rows, dest_rows = _count_rows(cfg.dsn(), list(expected))
    assert rows == 60 and dest_rows == total


def test_redelivery_and_duplicate_publication_record_nothing_twice(base_settings):
    cfg = isolated_settings(base_settings)
    publisher = RequestPublisher(cfg)
    events = [publisher.prepare(_event(i, ["ALL"])) for i in range(40)]
    publisher.publish(events)
    publisher.publish(events[:5])  # published twice, probably in the same batch
    ids = [e.record["event_id"] for e in events]
    with running(run_intake, cfg, "intake"):
        wait_until(lambda: _count_rows(cfg.dsn(), ids) == (40, 80), message="40 requests")
        publisher.publish(events[:10])  # the same events again, after they were recorded
        # The unacknowledged commands of re-published events are re-sent (connectors
        # dedupe by command id); a duplicate within one batch is sent once.
        commands = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=50)
    assert _count_rows(cfg.dsn(), ids) == (40, 80)
    assert len(commands) == 50
    assert Counter(r.decoded()["command_id"] for r in commands).most_common(1)[0][1] == 2

    # Redelivery: a new consumer group reads the whole topic again.
    again = cfg.model_copy(update={"topic_prefix": cfg.topic_prefix})
    with running(lambda s, stop: _run_in_group(s, stop, "intake-replay"), again, "replay"):
        wait_committed(again, {again.group("intake-replay"): (again.requests_topic,)})  # replay caught up
    assert _count_rows(cfg.dsn(), ids) == (40, 80)
    with psycopg.connect(cfg.dsn()) as conn:
        counts = conn.execute(
            "SELECT max(issue_count) FROM destination_status WHERE event_id = ANY(%s)", (ids,)
        ).fetchone()
    assert counts and counts[0] >= 2


def _run_in_group(cfg, stop: threading.Event, group: str) -> None:
    from services.common.avro import default_codec
    from services.common.clock import SystemClock
    from services.common.consumer_loop import ConsumerLoop
    from services.intake.step import IntakeStep

    step = IntakeStep(cfg, make_producer(cfg), default_codec(), SystemClock())
    ConsumerLoop(cfg, "intake", [cfg.requests_topic], step, stop, group_id=cfg.group(group)).run()


def _raw(cfg) -> Producer:
    return make_producer(cfg)


def test_bad_input_goes_to_the_dlq_with_reason_and_good_events_flow(base_settings):
    cfg = isolated_settings(base_settings)
    codec = default_codec()
    now = datetime.now(UTC)

    def body(**overrides):
        record = {
            "event_id": str(uuid.uuid4()),
            "customer_id": None,
            "email": "ok@example.com",
            "phone": None,
            "postal_address": None,
            "scopes": ["EMAIL_MARKETING"],
            "source": "API",
            "jurisdiction": None,
            "requested_at": now,
        }
        record.update(overrides)
        return codec.encode("OptOutRequested", record)

    good = codec.encode(
        "OptOutRequested",
        {
            "event_id": "dup-1",
            "email": "first@example.com",
            "scopes": ["ALL"],
            "source": "API",
            "requested_at": now,
        },
    )
    conflicting = codec.encode(
        "OptOutRequested",
        {
            "event_id": "dup-1",
            "email": "second@example.com",
            "scopes": ["ALL"],
            "source": "API",
            "requested_at": now,
        },
    )
    bad = {
        "undecodable": b"\x00\x01random bytes here",
        "unknown_fingerprint": b"\xc3\x01" + b"\x42" * 8 + b"\x02",
        "empty_value": b"",
        "no_identifier": body(email=None),
        "invalid_email": body(email="not an email"),
        "empty_scopes": body(scopes=[]),
        "requested_at_in_future": body(requested_at=now + timedelta(days=2)),
        "invalid_phone": body(phone="555"),
        "invalid_characters": body(customer_id="nul\x00byte"),
    }
    producer = _raw(cfg)
    good_ids = []
    for i, (reason, payload) in enumerate(bad.items()):
        ok_id = f"good-{i}-{uuid.uuid4()}"
        good_ids.append(ok_id)
        producer.produce(cfg.requests_topic, key=f"k{i}", value=body(event_id=ok_id))
        producer.produce(cfg.requests_topic, key=f"bad-{reason}", value=payload)
    producer.produce(cfg.requests_topic, key="same", value=good)
    producer.flush(10)
    with running(run_intake, cfg, "intake"):
        wait_until(
            lambda: _count_rows(cfg.dsn(), [*good_ids, "dup-1"])[0] == len(good_ids) + 1,
            message="good events recorded",
        )
        producer.produce(cfg.requests_topic, key="same", value=conflicting)
        producer.produce(cfg.requests_topic, key=None, value=body()[:14])  # truncated Avro
        producer.flush(10)
        dlq = read_topic(cfg, cfg.requests_dlq_topic, expect=len(bad) + 2)
    reasons = Counter(r.headers["optout.dlq.reason"] for r in dlq)
    for reason in bad:
        assert reasons[reason] == (2 if reason == "undecodable" else 1), (reason, reasons)
    assert reasons["duplicate_event_id_conflict"] == 1
    assert reasons["undecodable"] == 2
    by_reason = {r.headers["optout.dlq.reason"]: r for r in dlq}
    assert by_reason["invalid_email"].key == b"bad-invalid_email"
    assert by_reason["invalid_email"].value == bad["invalid_email"]
    assert by_reason["invalid_email"].headers["optout.dlq.topic"] == cfg.requests_topic
    assert "optout.dlq.offset" in by_reason["invalid_email"].headers
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT email FROM requests WHERE event_id = 'dup-1'").fetchone()
    assert row == ("first@example.com",)


def test_survives_the_database_going_away_for_ten_seconds(base_settings, database):
    if not database.get("superuser"):
        pytest.skip("needs a local superuser to take the database away")
    cfg = isolated_settings(base_settings, batch_size=50)
    publisher = RequestPublisher(cfg)
    first = [publisher.prepare(_event(i, ["EMAIL_MARKETING"])) for i in range(300)]
    second = [publisher.prepare(_event(i, ["EMAIL_MARKETING"])) for i in range(300, 600)]
    ids = [e.record["event_id"] for e in first + second]
    publisher.publish(first)
    name = sql.Identifier(database["name"])
    with (
        running(run_intake, cfg, "intake"),
        psycopg.connect(database["superuser"].replace(database["name"], "postgres"), autocommit=True) as su,
    ):
        wait_until(lambda: _count_rows(cfg.dsn(), ids)[0] > 0, message="first rows")
        su.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        su.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database["name"],),
        )
        publisher.publish(second)
        time.sleep(10)
        su.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
        wait_until(
            lambda: _count_rows(cfg.dsn(), ids) == (600, 600), timeout=90, message="catch-up after the outage"
        )
        commands = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=600)
    assert {r.decoded()["request_id"] for r in commands} == set(ids)


def request_messages(topic: str, records: list[dict[str, Any]]) -> list[Message]:
    """Consumed OptOutRequested messages of ``records`` (offsets 0, 1, ...), for a step's
    ``submit`` called directly."""
    codec = default_codec()
    return [
        Message(topic=topic, partition=0, offset=i, key=b"k", value=codec.encode("OptOutRequested", r))
        for i, r in enumerate(records)
    ]


def test_the_compacted_topic_ends_with_the_newest_state_when_chunks_commit_out_of_order(base_settings):
    """Two chunks of one batch change one person's state (an opt-out of email, one of SMS),
    and the later chunk commits first: the last message of that person on
    optout.suppressions must still be the state after both (it was the first chunk's own
    view, read inside its transaction, before the fix)."""
    from services.common.clock import SystemClock
    from services.domain.identity import sha256_hex
    from services.intake.step import IntakeStep
    from services.publisher.publish import RequestPublisher as Publisher

    cfg = isolated_settings(base_settings, intake_pipeline_chunk=1, intake_database_connections=2)
    email = f"order.{uuid.uuid4().hex[:8]}@example.com"
    now = datetime.now(UTC)
    publisher = Publisher(cfg)
    first = publisher.prepare(
        _event(0, ["EMAIL_MARKETING"], email=email, requested_at=now - timedelta(seconds=2))
    )
    second = publisher.prepare(
        _event(
            0, ["SMS_MARKETING"], email=email, phone="+14155550123", requested_at=now - timedelta(seconds=1)
        )
    )
    step = IntakeStep(cfg, make_producer(cfg), default_codec(), SystemClock())
    real = step._recorder
    second_done = threading.Event()

    def recorder(requests, commands, at):
        if requests[0].event_id == first.record["event_id"]:
            assert second_done.wait(30)  # the first chunk commits after the second
            return real(requests, commands, at)
        try:
            return real(requests, commands, at)
        finally:
            second_done.set()

    step._recorder = recorder
    messages = request_messages(cfg.requests_topic, [first.record, second.record])
    try:
        step.submit(messages)
    finally:
        step.close()
    subject = f"email_sha256:{sha256_hex(email)}"
    states = [r for r in read_topic(cfg, cfg.suppressions_topic) if r.key == subject.encode()]
    assert states, "no state published"
    last = states[-1].decoded()
    suppressed = {s["scope"] for s in last["scopes"] if s["suppressed"]}
    assert {"EMAIL_MARKETING", "SMS_MARKETING"} <= suppressed, last


def test_states_go_out_chunk_by_chunk_and_the_last_one_is_the_batch_outcome(base_settings):
    """Each chunk's changed subjects are published once it commits (issue #15), on the
    states thread, while later chunks are written: a person opted out in the first chunk and
    back in in the third gets one message per chunk that changed them, and the topic ends with
    the tombstone of the batch's outcome as soon as ``submit`` returns. One database
    connection, so the chunks commit in order: with two, the third chunk can commit before the
    first, which then loses the person's row to the newer opt-in and publishes nothing for
    them (one message, the same final state; seen once in CI)."""
    from services.common.clock import SystemClock
    from services.domain.identity import sha256_hex
    from services.intake.step import IntakeStep

    cfg = isolated_settings(base_settings, intake_pipeline_chunk=1, intake_database_connections=1)
    email = f"chunks.{uuid.uuid4().hex[:8]}@example.com"
    now = datetime.now(UTC)
    publisher = RequestPublisher(cfg)
    prepared = [
        publisher.prepare(
            _event(0, ["EMAIL_MARKETING"], email=email, requested_at=now - timedelta(seconds=3))
        ),
        publisher.prepare(_event(1, ["EMAIL_MARKETING"], requested_at=now - timedelta(seconds=2))),
        publisher.prepare(
            _event(
                0, ["EMAIL_MARKETING"], email=email, action="OPT_IN", requested_at=now - timedelta(seconds=1)
            )
        ),
    ]
    messages = request_messages(cfg.requests_topic, [p.record for p in prepared])
    step = IntakeStep(cfg, make_producer(cfg), default_codec(), SystemClock())
    try:
        step.submit(messages)
        subject = f"email_sha256:{sha256_hex(email)}"
        states = [r for r in read_topic(cfg, cfg.suppressions_topic) if r.key == subject.encode()]
    finally:
        step.close()
    assert len(states) == 2, states  # after the first chunk's commit and after the third's
    assert states[-1].value is None  # opted back in: nothing suppressed, a tombstone


def test_after_the_database_dropped_its_connections_one_failed_attempt_is_enough(base_settings, database):
    """Every connection of intake (each database worker's and the states thread's) opened
    before a failed batch is opened anew on its next use: once the database has terminated
    them all, one attempt of the batch fails and the next succeeds. Each stale connection
    failed an attempt of its own before, each followed by a longer backoff (an outage's
    catch-up took up to twice as long)."""
    from services.common.clock import SystemClock
    from services.common.errors import RetriableError
    from services.intake.step import IntakeStep

    cfg = isolated_settings(base_settings, intake_pipeline_chunk=1, intake_database_connections=2)
    publisher = RequestPublisher(cfg)

    def batch() -> tuple[list[Message], list[str]]:
        records = [publisher.prepare(_event(i, ["EMAIL_MARKETING"])).record for i in range(4)]
        return request_messages(cfg.requests_topic, records), [str(r["event_id"]) for r in records]

    step = IntakeStep(cfg, make_producer(cfg), default_codec(), SystemClock())
    try:
        step.submit(batch()[0])  # opens both workers' connections and the states thread's
        with psycopg.connect(database["superuser"], autocommit=True) as su:
            su.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database["name"],),
            )
        again, ids = batch()
        with pytest.raises(RetriableError):
            step.submit(again)
        step.submit(again)
    finally:
        step.close()
    assert _count_rows(cfg.dsn(), ids)[0] == 4


def test_a_batch_is_delivered_without_waiting_for_the_producers_linger(base_settings, monkeypatch):
    """Intake's producers linger before sending a partial batch (``PRODUCER_OVERRIDES``), yet
    ``submit`` flushes at the end of every batch and a flush sends what is queued at once: with
    a linger of 20 s the commands and subject states are on their topics within seconds."""
    import services.intake.step as step_module

    monkeypatch.setattr(step_module, "PRODUCER_OVERRIDES", {"linger.ms": 20_000})
    cfg = isolated_settings(base_settings)
    publisher = RequestPublisher(cfg)
    events = [publisher.prepare(_event(i, ["EMAIL_MARKETING"])) for i in range(5)]
    publisher.publish(events)
    started = time.monotonic()
    with running(run_intake, cfg, "intake"):
        commands = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=5, timeout=15, settle=0)
        states = read_topic(cfg, cfg.suppressions_topic, expect=5, timeout=15, settle=0)
    assert len(commands) == 5 and len(states) == 5
    assert time.monotonic() - started < 15
