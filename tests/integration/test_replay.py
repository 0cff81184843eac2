"""``optout replay`` (issue #13) on the real broker and database: a few hundred active
suppressions replayed to the email_provider destination (its connector as a consume loop,
against the stand-in over HTTP) with the confirmer running.

A run stopped after two batches, with its cursor then set back one batch (what a kill between
"delivered" and "cursor saved" leaves), and resumed: every suppressed person reaches the
stand-in exactly once, opted-in people and other scopes not at all; every replayed command is
acknowledged into ``replay_commands``; and no OptOutConfirmed is emitted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.common import audit
from services.common.settings import Settings
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.domain.identity import sha256_hex
from services.replay.run import Replayer
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.web import StandinServer
from services.suppression.entries import Entry, Kind, seal, suppression_ring
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration

TOKEN = "test-esp-token"
PEOPLE = 240
BATCH = 50


@pytest.fixture
def pipeline(base_settings: dict[str, Any]) -> Iterator[tuple[Settings, EmailProviderStandin]]:
    standin = EmailProviderStandin(token=TOKEN)
    with StandinServer(standin.handle, name="email_provider") as server:
        cfg = isolated_settings(
            base_settings,
            email_provider_url=server.url,
            email_provider_token=TOKEN,
            connector_retry_initial_seconds=0.05,
        )
        with (
            running(connector_runner("email_provider", cfg), cfg, "email_provider"),
            running(run_confirmer, cfg, "confirmer"),
        ):
            yield cfg, standin


def _suppress(cfg: Settings, emails: list[str], suppressed: bool, scope: str = "EMAIL_MARKETING") -> None:
    """Active suppressions as intake leaves them: a state row and a sealed list entry."""
    ring = suppression_ring(cfg)
    now = datetime.now(UTC)
    with psycopg.connect(cfg.dsn()) as conn:
        for email in emails:
            digest = sha256_hex(email)
            conn.execute(
                "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    f"email_sha256:{digest}",
                    scope,
                    suppressed,
                    now - timedelta(days=1),
                    f"evt-{uuid.uuid4()}",
                    "OPT_OUT" if suppressed else "OPT_IN",
                    now,
                ),
            )
            conn.execute(
                "INSERT INTO suppression_list (kind, sha256, sealed, scopes, first_request_id,"
                " last_request_id, created_at, updated_at) VALUES ('email', %s, %s, %s, 'e', 'e', %s, %s)"
                " ON CONFLICT DO NOTHING",
                (digest, seal(ring, Entry(Kind.EMAIL, digest, email)), [scope], now, now),
            )


def _replay_statuses(cfg: Settings) -> dict[str, int]:
    with psycopg.connect(cfg.dsn()) as conn:
        rows = conn.execute("SELECT status, count(*) FROM replay_commands GROUP BY status").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def test_a_killed_replay_resumes_and_delivers_each_suppression_once(
    pipeline: tuple[Settings, EmailProviderStandin],
) -> None:
    cfg, standin = pipeline
    tag = uuid.uuid4().hex[:6]
    people = [f"p{n}-{tag}@example.com" for n in range(PEOPLE)]
    _suppress(cfg, people, True)
    opted_in = [f"in{n}-{tag}@example.com" for n in range(5)]
    _suppress(cfg, opted_in, False)
    postal_only = [f"postal{n}-{tag}@example.com" for n in range(5)]
    _suppress(cfg, postal_only, True, scope="POSTAL_MARKETING")

    dry = Replayer(cfg, "email_provider", batch_size=BATCH).dry_run()
    assert (dry.total, dry.sent, dry.skipped) == (PEOPLE, PEOPLE, 0)

    first = Replayer(cfg, "email_provider", batch_size=BATCH, stop_after=2).run()
    assert first.stopped and first.sent == 2 * BATCH and not first.resumed
    # A kill after the second batch was delivered but before its cursor was saved.
    with psycopg.connect(cfg.dsn()) as conn:
        cursor = conn.execute(
            "SELECT max(subject) FROM (SELECT DISTINCT subject FROM suppression_state"
            " WHERE suppressed AND scope = 'EMAIL_MARKETING' ORDER BY subject LIMIT %s) s",
            (BATCH,),
        ).fetchone()
        assert cursor is not None
        conn.execute(
            "UPDATE replay_runs SET cursor_subject = %s, sent = %s WHERE replay_id = %s",
            (cursor[0], BATCH, first.replay_id),
        )

    second = Replayer(cfg, "email_provider", batch_size=BATCH, rate=5000).run()
    assert second.resumed and not second.stopped
    assert second.replay_id == first.replay_id
    assert (second.sent, second.skipped) == (PEOPLE, 0)

    wait_until(lambda: _replay_statuses(cfg) == {"APPLIED": PEOPLE}, timeout=60, message="replay acks")
    assert set(standin.suppressed) == set(people)
    assert all(standin.received[p] == 1 for p in people), "a person was applied twice"
    commands = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=PEOPLE + BATCH)
    assert len(commands) == PEOPLE + BATCH  # one batch sent twice, applied once
    assert {c.decoded()["request_id"] for c in commands} == {f"replay:{first.replay_id}"}
    assert read_topic(cfg, cfg.confirmations_topic, settle=1.0) == []

    again = Replayer(cfg, "email_provider", batch_size=BATCH).dry_run()
    assert again.replay_id == "(new)" and again.total == PEOPLE  # the run is finished

    # The audit trail of each person's request: replayed (twice for the batch sent again),
    # then one acknowledgement (the confirmer, in the same transaction as replay_commands).
    with psycopg.connect(cfg.dsn()) as conn:
        steps: dict[str, int] = dict(
            conn.execute(
                "SELECT step, count(*) FROM audit_events WHERE destination = 'email_provider' GROUP BY step"
            ).fetchall()
        )
        (event_id,) = conn.execute(  # the last subject: in the last batch, sent once
            "SELECT event_id FROM suppression_state WHERE scope = 'EMAIL_MARKETING' AND suppressed"
            " ORDER BY subject DESC LIMIT 1"
        ).fetchone() or (None,)
        trail = audit.timeline(conn, str(event_id))
    assert steps == {"replayed": PEOPLE + BATCH, "acknowledged": PEOPLE}
    assert [(e.step, e.destination, e.status) for e in trail] == [
        ("replayed", "email_provider", None),
        ("acknowledged", "email_provider", "APPLIED"),
    ]
    assert trail[1].detail is not None and trail[1].detail.startswith("replay command ")
    command = trail[1].detail.split()[2].rstrip(":")
    assert trail[0].detail == f"replayed to email_provider ({first.replay_id}): command {command}"


def test_batches_never_split_a_subjects_scopes(base_settings: dict[str, Any], tmp_path: Path) -> None:
    """Subjects with one to three scopes of a destination serving three, batches of one to
    four subjects: every subject is sent once with all its suppressed scopes (a batch is cut
    after whole subjects), a device hash is skipped, other scopes and opted-in rows are not."""
    path = tmp_path / "destinations.toml"
    path.write_text(
        """
[[destinations]]
name = "everywhere"
kind = "partners"
scopes = ["EMAIL_MARKETING", "SMS_MARKETING", "THIRD_PARTY_SHARING"]
identifiers = ["customer_id", "email_sha256", "phone_sha256"]
requires_one_of = ["customer_id", "email_sha256", "phone_sha256"]
"""
    )
    cfg = isolated_settings(base_settings, destinations_file=path)
    scopes = ["EMAIL_MARKETING", "SMS_MARKETING", "THIRD_PARTY_SHARING"]
    since = datetime(2026, 11, 1, tzinfo=UTC)
    expected: dict[str, list[str]] = {}
    state = []
    for n in range(23):
        subject = f"email_sha256:{sha256_hex(f'multi{n}@example.com')}" if n % 4 else f"cust:C-{n}"
        mine = scopes[: 1 + n % 3]
        expected[subject] = mine
        state += [(subject, scope, True) for scope in mine]
        state.append((subject, "POSTAL_MARKETING", True))  # not the destination's
    state.append((f"email_sha256:{sha256_hex('opted-in@example.com')}", "EMAIL_MARKETING", False))
    state.append((f"device_sha256:{'d' * 64}", "THIRD_PARTY_SHARING", True))  # unusable: skipped
    with psycopg.connect(cfg.dsn()) as conn:
        conn.cursor().executemany(
            "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at)"
            " VALUES (%s, %s, %s, %s, 'e', %s, %s)",
            [(s, scope, on, since, "OPT_OUT" if on else "OPT_IN", since) for s, scope, on in state],
        )

    for size in (1, 2, 3, 4):
        dry = Replayer(cfg, "everywhere", batch_size=size).dry_run()
        assert (dry.total, dry.sent, dry.skipped) == (len(expected) + 1, len(expected), 1), size
    report = Replayer(cfg, "everywhere", batch_size=2).run()
    assert (report.sent, report.skipped, report.total, report.stopped) == (
        len(expected),
        1,
        len(expected) + 1,
        False,
    )
    commands = [c.decoded() for c in read_topic(cfg, cfg.suppress_topic("everywhere"), expect=len(expected))]
    sent = {
        (c["customer_id"] and f"cust:{c['customer_id']}") or f"email_sha256:{c['email_sha256']}": c
        for c in commands
    }
    assert len(commands) == len(sent) == len(expected)
    assert {s: c["scopes"] for s, c in sent.items()} == expected
    with psycopg.connect(cfg.dsn()) as conn:  # one audit row per command (one request: 'e')
        audited = conn.execute(
            "SELECT count(DISTINCT command_id) FROM audit_events WHERE step = 'replayed'"
        ).fetchone()
    assert audited == (len(expected),)
