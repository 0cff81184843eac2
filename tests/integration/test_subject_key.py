"""The subject key (Kafka key of ``optout.requests``, ``requests.subject_key``) carries no
raw contact detail: it is a kind prefix and a SHA-256 of the normalized identifier."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from services.common.db import migration_files
from services.domain.identity import sha256_hex
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration


def test_published_key_and_stored_subject_key_carry_no_raw_email_or_phone(
    base_settings: dict[str, Any],
) -> None:
    cfg = isolated_settings(base_settings)
    tag = uuid.uuid4().hex[:8]
    email = f"Jane.{tag}@Example.com"
    publisher = RequestPublisher(cfg)
    by_email = publisher.prepare(
        {"event_id": f"evt-{uuid.uuid4()}", "email": email, "phone": "(415) 555-0142", "scopes": ["ALL"]}
    )
    by_phone = publisher.prepare(
        {"event_id": f"evt-{uuid.uuid4()}", "phone": "(415) 555-0143", "scopes": ["THIRD_PARTY_SHARING"]}
    )
    publisher.publish([by_email, by_phone])
    records = read_topic(cfg, cfg.requests_topic, expect=2)
    keys = {r.decoded()["event_id"]: (r.key or b"").decode() for r in records}
    normalized = email.lower()
    assert keys[by_email.record["event_id"]] == f"email_sha256:{sha256_hex(normalized)}"
    assert keys[by_phone.record["event_id"]] == f"phone_sha256:{sha256_hex('+14155550143')}"

    ids = list(keys)
    with running(run_intake, cfg, "intake"):

        def recorded() -> bool:
            with psycopg.connect(cfg.dsn()) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM requests WHERE event_id = ANY(%s)", (ids,)
                ).fetchone()
            return row is not None and row[0] == 2

        wait_until(recorded, timeout=60, message="intake recorded both requests")
    with psycopg.connect(cfg.dsn()) as conn:
        query = "SELECT event_id, subject_key FROM requests WHERE event_id = ANY(%s)"
        stored = dict(conn.execute(query, (ids,)).fetchall())
    assert stored == keys
    for text in [*keys.values(), *stored.values()]:
        for raw in (normalized, tag, "4155550142", "4155550143", "555-014"):
            assert raw not in text.lower()


def test_migration_0004_rewrites_raw_subject_keys(database: dict[str, str]) -> None:
    """Rows written before the change (``email:<raw>`` / ``phone:<raw>``) are rewritten to
    the hashed form by the migration's own statement; other keys are left alone."""
    body = next(sql for version, _name, sql in migration_files() if version == 4)
    tag = uuid.uuid4().hex[:8]
    old_email = f"old.{tag}@example.com"
    rows = {
        f"old-{tag}-e": (f"email:{old_email}", "email_sha256:" + sha256_hex(old_email)),
        f"old-{tag}-p": ("phone:+14155550199", f"phone_sha256:{sha256_hex('+14155550199')}"),
        f"old-{tag}-c": (f"cust:C-{tag}", f"cust:C-{tag}"),
        f"old-{tag}-a": ("postal:" + "ab" * 32, "postal:" + "ab" * 32),
    }
    with psycopg.connect(database["admin"]) as conn:
        for event_id, (old, _new) in rows.items():
            conn.execute(
                "INSERT INTO requests (event_id, content_sha256, subject_key, scopes, source,"
                " requested_at, due_at, deadline_rule) VALUES (%s, 'h', %s, ARRAY['ALL'], 'API',"
                " now(), now(), 'default')",
                (event_id, old),
            )
        # The migration ran already on this database (fresh rows are untouched by it);
        # running its statements again is what an upgrade of an old database does.
        conn.execute(body.encode())
        got = dict(
            conn.execute(
                "SELECT event_id, subject_key FROM requests WHERE event_id = ANY(%s)", (list(rows),)
            ).fetchall()
        )
        conn.rollback()
    assert got == {event_id: new for event_id, (_old, new) in rows.items()}
