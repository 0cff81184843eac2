"""Opting back in (issue #12) on the real broker and database: intake, the email_provider
connector (against its stand-in over HTTP) and the confirmer as consume loops.

* opt-out, then opt-in, then opt-out for one person: three confirmations (OPT_OUT, OPT_IN,
  OPT_OUT), the stand-in ends with the person suppressed, the state table says suppressed
  and the suppression list holds the person again;
* a stale opt-in (older than the latest opt-out) changes nothing: recorded superseded, no
  command, nothing removed at the destination.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.common.destinations import load_destinations
from services.common.sealing import KeyRing
from services.common.settings import DEV_SUPPRESSION_KEY, Settings
from services.domain.identity import sha256_hex
from services.domain.planning import plan_commands
from services.domain.validation import validate_request
from services.intake.store import record_batch
from services.publisher.publish import RequestPublisher
from services.standins.email_provider_api import EmailProviderStandin
from tests.support.pipeline import email_provider_pipeline, read_topic, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(base_settings: dict[str, Any]) -> Iterator[tuple[Settings, EmailProviderStandin]]:
    with email_provider_pipeline(base_settings) as running_pipeline:
        yield running_pipeline


def _publish(cfg: Settings, email: str, action: str, requested_at: datetime) -> str:
    publisher = RequestPublisher(cfg)
    event_id = f"evt-{uuid.uuid4()}"
    publisher.publish(
        [
            publisher.prepare(
                {
                    "event_id": event_id,
                    "email": email,
                    "scopes": ["EMAIL_MARKETING"],
                    "action": action,
                    "requested_at": requested_at,
                }
            )
        ]
    )
    return event_id


def _confirmations(cfg: Settings, count: int) -> list[dict[str, Any]]:
    return [r.decoded() for r in read_topic(cfg, cfg.confirmations_topic, expect=count, settle=0.2)]


def _state(cfg: Settings, email: str) -> tuple[bool, str] | None:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute(
            "SELECT suppressed, event_id FROM suppression_state WHERE subject = %s AND scope = %s",
            (f"email_sha256:{sha256_hex(email)}", "EMAIL_MARKETING"),
        ).fetchone()
    return (bool(row[0]), str(row[1])) if row else None


def _listed(cfg: Settings, email: str) -> list[str] | None:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute(
            "SELECT scopes FROM suppression_list WHERE kind = 'email' AND sha256 = %s", (sha256_hex(email),)
        ).fetchone()
    return list(row[0]) if row else None


def test_out_in_out_ends_suppressed_with_three_confirmations(
    pipeline: tuple[Settings, EmailProviderStandin],
) -> None:
    cfg, standin = pipeline
    email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    now = datetime.now(UTC)
    events = []
    for n, (action, minutes_ago) in enumerate((("OPT_OUT", 3), ("OPT_IN", 2), ("OPT_OUT", 1)), start=1):
        events.append(_publish(cfg, email, action, now - timedelta(minutes=minutes_ago)))
        confirmed = _confirmations(cfg, n)
        assert len(confirmed) == n
        wanted = email not in standin.suppressed if action == "OPT_IN" else email in standin.suppressed
        assert wanted, f"after {action} the stand-in disagrees"
        if action == "OPT_IN":
            assert _listed(cfg, email) is None  # nothing suppresses them: the entry is gone
    by_request = {c["request_id"]: c for c in _confirmations(cfg, 3)}
    assert [by_request[e]["action"] for e in events] == ["OPT_OUT", "OPT_IN", "OPT_OUT"]
    assert all(by_request[e]["notify_email"] == email for e in events)
    assert email in standin.suppressed and standin.removed[email] == 1
    assert _state(cfg, email) == (True, events[2])
    assert _listed(cfg, email) == ["EMAIL_MARKETING"]
    commands = [r.decoded() for r in read_topic(cfg, cfg.suppress_topic("email_provider"), expect=3)]
    assert sorted(c["action"] for c in commands) == ["OPT_IN", "OPT_OUT", "OPT_OUT"]


def test_a_stale_opt_in_changes_nothing(pipeline: tuple[Settings, EmailProviderStandin]) -> None:
    cfg, standin = pipeline
    email = f"bob-{uuid.uuid4().hex[:8]}@example.com"
    now = datetime.now(UTC)
    out = _publish(cfg, email, "OPT_OUT", now - timedelta(minutes=1))
    _confirmations(cfg, 1)
    stale = _publish(cfg, email, "OPT_IN", now - timedelta(minutes=5))

    def recorded() -> bool:
        with psycopg.connect(cfg.dsn()) as conn:
            return conn.execute("SELECT 1 FROM requests WHERE event_id = %s", (stale,)).fetchone() is not None

    wait_until(recorded, timeout=30, message="intake recorded the stale opt-in")
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute(
            "SELECT state, action, effective_scopes, confirmed_at IS NOT NULL,"
            " (SELECT count(*) FROM destination_status d WHERE d.event_id = r.event_id)"
            " FROM requests r WHERE event_id = %s",
            (stale,),
        ).fetchone()
    assert row == ("CONFIRMED", "OPT_IN", [], True, 0)  # superseded: closed, no command
    commands = [r.decoded() for r in read_topic(cfg, cfg.suppress_topic("email_provider"), expect=1)]
    assert [c["action"] for c in commands] == ["OPT_OUT"]  # no un-suppress command was sent
    assert email in standin.suppressed and not standin.removed
    assert _state(cfg, email) == (True, out)
    assert [c["request_id"] for c in _confirmations(cfg, 1)] == [out]  # none for the stale one


# --- the recording transaction alone (no broker) ---------------------------------------------
def _request(email: str, action: str, scopes: list[str], minutes_ago: int, **fields: Any) -> Any:
    now = datetime.now(UTC)
    return validate_request(
        {
            "event_id": f"evt-{uuid.uuid4()}",
            "email": email,
            "scopes": scopes,
            "source": "API",
            "action": action,
            "requested_at": now - timedelta(minutes=minutes_ago),
            **fields,
        },
        now,
        timedelta(minutes=5),
    )


def _record(conn: psycopg.Connection[Any], requests: list[Any]) -> Any:
    now = datetime.now(UTC)
    commands = {r.event_id: plan_commands(r, now, load_destinations()) for r in requests}
    return record_batch(conn, requests, commands, now, KeyRing({"dev": DEV_SUPPRESSION_KEY}, "dev"))


def test_recording_keeps_newest_wins_and_the_suppression_list_in_step(database: dict[str, str]) -> None:
    email = f"eve-{uuid.uuid4().hex[:8]}@example.com"
    with psycopg.connect(database["app"]) as conn:
        everything = _request(email, "OPT_OUT", ["ALL"], 10, customer_id="c-eve")
        assert _record(conn, [everything]).withheld == set()
        assert _listed_in(conn, email) == ["ALL"]
        # An opt-in for ALL older than the opt-out: superseded, every command withheld.
        stale = _request(email, "OPT_IN", ["ALL"], 20)
        outcome = _record(conn, [stale])
        assert outcome.superseded == {stale.event_id} and len(outcome.withheld) == 2
        # Opting back in to email only: the email provider's command only.
        email_only = _request(email, "OPT_IN", ["EMAIL_MARKETING"], 5)
        outcome = _record(conn, [email_only])
        assert outcome.new == {email_only.event_id} and not outcome.superseded and not outcome.withheld
        assert _listed_in(conn, email) == ["POSTAL_MARKETING", "SMS_MARKETING", "THIRD_PARTY_SHARING"]
        # One chunk with an opt-in and an older opt-out of a new person: only the opt-in acts.
        other = f"zed-{uuid.uuid4().hex[:8]}@example.com"
        newer_in = _request(other, "OPT_IN", ["EMAIL_MARKETING"], 1)
        older_out = _request(other, "OPT_OUT", ["EMAIL_MARKETING"], 2)
        outcome = _record(conn, [newer_in, older_out])
        assert outcome.superseded == {older_out.event_id}
        assert _listed_in(conn, other) is None
        state = dict(
            conn.execute(
                "SELECT scope, suppressed FROM suppression_state WHERE subject = %s",
                (f"email_sha256:{sha256_hex(email)}",),
            ).fetchall()
        )
        assert state == {
            "EMAIL_MARKETING": False,
            "POSTAL_MARKETING": True,
            "SMS_MARKETING": True,
            "THIRD_PARTY_SHARING": True,
        }


def _listed_in(conn: psycopg.Connection[Any], email: str) -> list[str] | None:
    row = conn.execute(
        "SELECT scopes FROM suppression_list WHERE kind = 'email' AND sha256 = %s", (sha256_hex(email),)
    ).fetchone()
    return list(row[0]) if row else None
