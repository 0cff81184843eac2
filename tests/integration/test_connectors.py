"""The three reference connectors as real consume loops against the real broker and
database, talking HTTP to the stand-ins served in-process on free ports (issue:
connector kit)."""

from __future__ import annotations

import csv
import io
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from services.common.avro import default_codec
from services.common.destinations import load_destinations
from services.common.kafka import DeliveryTracker, make_producer
from services.common.settings import PartnerEndpoint, Settings
from services.connectors.registry import connector_runner
from services.domain.identity import sha256_hex
from services.domain.planning import plan_commands
from services.domain.validation import validate_request
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.partners_api import PartnersStandin
from services.standins.web import StandinServer
from tests.support.pipeline import Record, isolated_settings, read_topic, running

DEFAULT_DESTINATIONS = load_destinations()
pytestmark = pytest.mark.integration

ESP_TOKEN = "test-esp-token"
SCOPE_FOR = {
    "email_provider": "EMAIL_MARKETING",
    "mail_house": "POSTAL_MARKETING",
    "third_party_sharing": "THIRD_PARTY_SHARING",
}
FAST_RETRIES = {"connector_retry_initial_seconds": 0.05, "connector_retry_max_backoff_seconds": 0.5}


def _address(i: int) -> dict[str, Any]:
    return {
        "name": f"Ada  Lovelace {i}",
        "lines": [f"{i} St James's Sq", "Flat 2"],
        "city": "London",
        "region": None,
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    }


def commands(destination: str, count: int, rejected_every: int = 0) -> list[dict[str, Any]]:
    """SuppressionCommand records planned by intake's own code from validated requests."""
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    out: list[dict[str, Any]] = []
    for i in range(count):
        email = (
            f"bounce{i}-{tag}@example.com"
            if rejected_every and i % rejected_every == 0
            else f"user{i}-{tag}@example.com"
        )
        request = validate_request(
            {
                "event_id": f"evt-{uuid.uuid4()}",
                "email": email,
                "phone": f"+1415555{i:04d}",
                "customer_id": f"C-{tag}-{i}",
                "postal_address": _address(i),
                "scopes": [SCOPE_FOR[destination]],
                "source": "API",
                "requested_at": now,
            },
            now,
            timedelta(minutes=5),
        )
        out.extend(
            c.record
            for c in plan_commands(request, now, DEFAULT_DESTINATIONS)
            if c.destination == destination
        )
    return out


def publish(
    cfg: Settings, destination: str, records: list[dict[str, Any]], raw: list[bytes] | None = None
) -> None:
    codec = default_codec()
    tracker = DeliveryTracker(make_producer(cfg))
    for record in records:
        tracker.produce(
            cfg.suppress_topic(destination),
            codec.encode("SuppressionCommand", record),
            key=record["request_id"],
        )
    for value in raw or []:
        tracker.produce(cfg.suppress_topic(destination), value, key=b"junk")
    tracker.wait()


def acks_by_command(records: list[Record]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        ack = r.decoded()
        assert r.key == ack["request_id"].encode()
        grouped.setdefault(ack["command_id"], []).append(ack)
    return grouped


def stored_rows(cfg: Settings, destination: str, ids: list[str]) -> int:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM connector_applied WHERE destination = %s AND command_id = ANY(%s)",
            (destination, ids),
        ).fetchone()
    assert row is not None
    return int(row[0])


Esp = tuple[EmailProviderStandin, StandinServer]


@pytest.fixture
def esp_server() -> Iterator[Esp]:
    standin = EmailProviderStandin(token=ESP_TOKEN)
    with StandinServer(standin.handle, name="email_provider") as server:
        yield standin, server


# --- email provider ---------------------------------------------------------------------------
def test_email_provider_applies_once_and_acknowledges_every_delivery(
    base_settings: dict[str, Any], esp_server: Esp
) -> None:
    standin, server = esp_server
    cfg = isolated_settings(
        base_settings, email_provider_url=server.url, email_provider_token=ESP_TOKEN, **FAST_RETRIES
    )
    batch = commands("email_provider", 20)
    wrong_dest = commands("mail_house", 1)
    publish(cfg, "email_provider", batch + wrong_dest, raw=[b"not avro"])
    with running(connector_runner("email_provider", cfg), cfg, "email_provider"):
        first = read_topic(cfg, cfg.acks_topic, expect=20)
        publish(cfg, "email_provider", batch[:5])  # re-sent commands: same command ids
        both = read_topic(cfg, cfg.acks_topic, expect=25)
        dead = read_topic(cfg, cfg.suppress_dlq_topic("email_provider"), expect=2)

    assert len(first) == 20 and len(both) == 25
    grouped = acks_by_command(both)
    assert set(grouped) == {c["command_id"] for c in batch}
    assert {a["status"] for acks in grouped.values() for a in acks} == {"APPLIED"}
    for record in batch[:5]:
        twice = grouped[record["command_id"]]
        assert len(twice) == 2 and twice[0] == twice[1]  # re-ack says exactly the same
    # Applied once: every address reached the provider in exactly one accepted request.
    assert Counter(standin.received.values()) == {1: 20}
    assert set(standin.suppressed) == {c["email"] for c in batch}
    assert stored_rows(cfg, "email_provider", list(grouped)) == 20
    assert sorted(r.headers["optout.dlq.reason"] for r in dead) == ["undecodable", "wrong_destination"]
    assert {r.headers["optout.dlq.service"] for r in dead} == {"connector.email_provider"}


def test_email_provider_rides_out_503s_and_429s(base_settings: dict[str, Any]) -> None:
    standin = EmailProviderStandin(
        token=ESP_TOKEN,
        failure_rate=0.3,
        rate_limit_per_second=3,
        retry_after_seconds=1,
        rng=random.Random(1),
    )
    with StandinServer(standin.handle) as server:
        cfg = isolated_settings(
            base_settings,
            email_provider_url=server.url,
            batch_size=4,
            email_provider_token=ESP_TOKEN,
            **FAST_RETRIES,
        )
        batch = commands("email_provider", 40)
        publish(cfg, "email_provider", batch)
        started = time.monotonic()
        with running(connector_runner("email_provider", cfg), cfg, "email_provider"):
            acks = read_topic(cfg, cfg.acks_topic, expect=40, timeout=120)
        elapsed = time.monotonic() - started
        listed = httpx.get(
            f"{server.url}/v3/asm/suppressions/global", headers={"Authorization": f"Bearer {ESP_TOKEN}"}
        ).json()
    grouped = acks_by_command(acks)
    assert len(acks) == 40 and set(grouped) == {c["command_id"] for c in batch}
    assert {a[0]["status"] for a in grouped.values()} <= {"APPLIED", "ALREADY_SUPPRESSED"}
    assert standin.answers[503] > 0 and standin.answers[429] > 0, standin.answers
    assert {e["email"] for e in listed} == {c["email"] for c in batch}
    print(
        f"\n40 commands through 30% 503s + 3 req/s limit: answers={dict(standin.answers)} in {elapsed:.1f}s"
    )


def test_email_provider_permanent_refusal_is_a_rejected_ack_with_the_reason(
    base_settings: dict[str, Any],
) -> None:
    batch = commands("email_provider", 12, rejected_every=4)
    refused = {c["email"] for c in batch if c["email"].startswith("bounce")}
    standin = EmailProviderStandin(
        token=ESP_TOKEN, rejected=dict.fromkeys(refused, "address hard-bounced on 2025-01-02")
    )
    with StandinServer(standin.handle) as server:
        cfg = isolated_settings(
            base_settings, email_provider_url=server.url, email_provider_token=ESP_TOKEN, **FAST_RETRIES
        )
        publish(cfg, "email_provider", batch)
        with running(connector_runner("email_provider", cfg), cfg, "email_provider"):
            acks = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=12)]
    by_id = {a["command_id"]: a for a in acks}
    for c in batch:
        ack = by_id[c["command_id"]]
        if c["email"] in refused:
            assert ack["status"] == "REJECTED"
            assert ack["detail"] == "email provider: address hard-bounced on 2025-01-02"
        else:
            assert ack["status"] == "APPLIED" and ack["detail"] is None
    assert len(refused) == 3 and set(standin.suppressed) == {c["email"] for c in batch} - refused


def test_a_refusal_naming_no_address_rejects_only_the_refused_one(base_settings: dict[str, Any]) -> None:
    batch = commands("email_provider", 40)
    bad = batch[29]["email"]
    standin = EmailProviderStandin(
        token=ESP_TOKEN, refused_unnamed={bad: "invalid email in recipient_emails"}
    )
    with StandinServer(standin.handle) as server:
        cfg = isolated_settings(
            base_settings, email_provider_url=server.url, email_provider_token=ESP_TOKEN, **FAST_RETRIES
        )
        publish(cfg, "email_provider", batch)
        with running(connector_runner("email_provider", cfg), cfg, "email_provider"):
            acks = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=40)]
    statuses = {a["command_id"]: (a["status"], a["detail"]) for a in acks}
    assert statuses == {
        c["command_id"]: ("REJECTED", "email provider: HTTP 400: invalid email in recipient_emails")
        if c["email"] == bad
        else ("APPLIED", None)
        for c in batch
    }
    assert set(standin.suppressed) == {c["email"] for c in batch} - {bad}


def test_no_ack_while_the_database_is_away(
    base_settings: dict[str, Any], database: dict[str, str], esp_server: Esp
) -> None:
    if not database.get("superuser"):
        pytest.skip("needs a local superuser to take the database away")
    standin, server = esp_server
    cfg = isolated_settings(
        base_settings, email_provider_url=server.url, email_provider_token=ESP_TOKEN, **FAST_RETRIES
    )
    batch = commands("email_provider", 10)
    name = sql.Identifier(database["name"])
    with psycopg.connect(database["superuser"].replace(database["name"], "postgres"), autocommit=True) as su:
        su.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        su.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database["name"],),
        )
        try:
            with running(connector_runner("email_provider", cfg), cfg, "email_provider"):
                publish(cfg, "email_provider", batch)
                during = read_topic(cfg, cfg.acks_topic, settle=6)
                applied_during = dict(standin.received)
                su.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
                after = read_topic(cfg, cfg.acks_topic, expect=10, timeout=90)
        finally:
            su.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
    assert during == [] and applied_during == {}  # nothing applied or acked without the store
    assert Counter(standin.received.values()) == {1: 10}
    assert {a["command_id"] for a in (r.decoded() for r in after)} == {c["command_id"] for c in batch}


# --- mail house -------------------------------------------------------------------------------
def _csv_rows(folder: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(folder.glob("suppressions-*.csv")):
        rows.extend(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    return rows


def test_mail_house_writes_durable_rows_once(base_settings: dict[str, Any], tmp_path: Path) -> None:
    cfg = isolated_settings(base_settings, mail_house_dir=str(tmp_path), batch_size=3, **FAST_RETRIES)
    batch = commands("mail_house", 10)
    ids = [c["command_id"] for c in batch]
    publish(cfg, "mail_house", batch)
    with running(connector_runner("mail_house", cfg), cfg, "mail_house"):
        acks = read_topic(cfg, cfg.acks_topic, expect=10)
        # Every acknowledged command is on disk already.
        assert {r.decoded()["command_id"] for r in acks} <= {r["command_id"] for r in _csv_rows(tmp_path)}
        publish(cfg, "mail_house", batch[:3])  # re-sent: answered from the dedupe store
        # Simulate a crash after writing the file but before recording the outcome:
        # forget four outcomes, then re-send them, so apply runs again for them.
        with psycopg.connect(cfg.dsn()) as conn:
            conn.execute(
                "DELETE FROM connector_applied WHERE destination = 'mail_house' AND command_id = ANY(%s)",
                (ids[6:],),
            )
        publish(cfg, "mail_house", batch[6:])
        all_acks = read_topic(cfg, cfg.acks_topic, expect=17)
    assert len(all_acks) == 17
    assert {a["status"] for a in (r.decoded() for r in all_acks)} == {"APPLIED"}
    rows = _csv_rows(tmp_path)
    assert sorted(r["command_id"] for r in rows) == sorted(ids)  # no row twice
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    by_id = {r["command_id"]: r for r in rows}
    first = by_id[batch[0]["command_id"]]
    assert first["name"] == "ADA LOVELACE 0" and first["address_line_1"] == "0 ST JAMES'S SQ"
    assert first["request_id"] == batch[0]["request_id"]
    assert first["suppressed_on"] == datetime.now(UTC).date().isoformat()
    assert stored_rows(cfg, "mail_house", ids) == 10


def test_mail_house_keeps_a_garbled_file_aside_and_carries_on(
    base_settings: dict[str, Any], tmp_path: Path
) -> None:
    cfg = isolated_settings(base_settings, mail_house_dir=str(tmp_path), **FAST_RETRIES)
    today = tmp_path / f"suppressions-{datetime.now(UTC).date().isoformat()}.csv"
    held = b"request_id;command_id;name\r\nevt-1;cmd-1;JANE \xff\xfe EDITED IN A SPREADSHEET\r\n"
    today.write_bytes(held)
    batch = commands("mail_house", 5)
    publish(cfg, "mail_house", batch)
    with running(connector_runner("mail_house", cfg), cfg, "mail_house"):
        acks = [r.decoded() for r in read_topic(cfg, cfg.acks_topic, expect=5)]
    assert {a["command_id"]: a["status"] for a in acks} == {c["command_id"]: "APPLIED" for c in batch}
    [aside] = list(tmp_path.glob(f"{today.name}.garbled-*"))
    assert aside.read_bytes() == held
    assert sorted(r["command_id"] for r in _csv_rows(tmp_path)) == sorted(c["command_id"] for c in batch)


# --- third-party sharing ----------------------------------------------------------------------
def test_third_party_partners_get_hashes_only_and_all_must_accept(base_settings: dict[str, Any]) -> None:
    tokens = {"adnetwork": "tok-a", "databroker": "tok-b"}
    standin = PartnersStandin(tokens, failure_rate=0.3, rng=random.Random(1))  # first draw 0.13: a 503 first
    with StandinServer(standin.handle) as server:
        partners = [
            PartnerEndpoint(name=n, url=f"{server.url}/partners/{n}", token=SecretStr(t))
            for n, t in tokens.items()
        ]
        cfg = isolated_settings(base_settings, partners=partners, batch_size=5, **FAST_RETRIES)
        batch = commands("third_party_sharing", 15)
        publish(cfg, "third_party_sharing", batch)
        with running(connector_runner("third_party_sharing", cfg), cfg, "third_party_sharing"):
            acks = read_topic(cfg, cfg.acks_topic, expect=15, timeout=120)
        received = {n: httpx.get(f"{server.url}/partners/{n}/opt-outs").json() for n in tokens}
    assert {a["command_id"]: a["status"] for a in (r.decoded() for r in acks)} == {
        c["command_id"]: "APPLIED" for c in batch
    }
    assert sum(p.answers[503] for p in standin.partners.values()) > 0  # retries happened
    for name, state in received.items():
        by_ref = {o["reference"]: o for o in state["opt_outs"]}
        assert set(by_ref) == {c["command_id"] for c in batch}, name
        for c in batch:
            assert by_ref[c["command_id"]]["email_sha256"] == c["email_sha256"]
            assert by_ref[c["command_id"]]["customer_id_sha256"] == sha256_hex(c["customer_id"])
        everything = json.dumps(state["raw_bodies"])
        assert "@" not in everything
        assert not any(c["customer_id"] in everything for c in batch)
        assert "+1415555" not in everything
