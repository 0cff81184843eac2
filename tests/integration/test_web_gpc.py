"""GPC for browsers without a token, the applied-signal log and "resubscribe", against the
real broker and database (issue #12)."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from services.common.contract import Scope
from services.common.settings import PartnerEndpoint
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.domain.identity import sha256_hex
from services.intake.service import run as run_intake
from services.retention.purge import purge_gpc_signals
from services.standins.partners_api import PartnersStandin
from services.standins.web import StandinServer
from services.web.app import create_app
from services.web.device import device_event_id, subject_sha256
from services.web.links import mint_link
from services.web.tokens import Purpose, keyring_from_settings, optin_event_id, request_event_id, verify
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration

GENEROUS = {"web_rate_limit_per_second": 1000.0, "web_rate_limit_burst": 1000}
FIREFOX = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"}


def _state(html: str) -> str:
    found = re.search(r'id="gpc-state" data-state="([a-z]+)"', html)
    assert found, html
    return found.group(1)


def _request_state(cfg, event_id: str) -> str | None:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT state FROM requests WHERE event_id = %s", (event_id,)).fetchone()
    return str(row[0]) if row else None


def _signals(cfg) -> list[tuple]:
    with psycopg.connect(cfg.dsn()) as conn:
        return conn.execute(
            "SELECT subject_kind, subject_sha256, event_id, published, user_agent_family FROM gpc_signals"
            " ORDER BY id"
        ).fetchall()


def test_a_browser_without_a_token_is_opted_out_and_sees_it_honoured(base_settings):
    tokens = {"adnetwork": "tok-a"}
    partners = PartnersStandin(tokens)
    with StandinServer(partners.handle, name="partners") as server:
        cfg = isolated_settings(
            base_settings,
            **GENEROUS,
            partners=[
                PartnerEndpoint(name=n, url=f"{server.url}/partners/{n}", token=SecretStr(t))
                for n, t in tokens.items()
            ],
        )
        with TestClient(create_app(cfg), base_url="https://testserver") as browser:
            first = browser.get(cfg.web_gpc_path, headers={"Sec-GPC": "1", **FIREFOX})
            again = browser.get(cfg.web_gpc_path, headers={"Sec-GPC": "1", **FIREFOX})
            device_id = browser.cookies.get("__Host-optout_device")
            assert first.status_code == 200 and _state(first.text) == "recorded"
            assert "set-cookie" in first.headers and "set-cookie" not in again.headers
            assert device_id is not None
            event_id = device_event_id(device_id)
            [record] = [r.decoded() for r in read_topic(cfg, cfg.requests_topic, expect=1, settle=0.5)]
            assert record["event_id"] == event_id and record["device_id"] == device_id
            assert record["customer_id"] is None and record["email"] is None and record["phone"] is None
            assert record["source"] == "GPC_SIGNAL" and record["scopes"] == ["THIRD_PARTY_SHARING"]
            assert record["action"] == "OPT_OUT"

            services = [
                ("intake", run_intake),
                ("third_party_sharing", connector_runner("third_party_sharing", cfg)),
                ("confirmer", run_confirmer),
            ]
            with contextlib.ExitStack() as stack:
                for name, main in services:
                    stack.enter_context(running(main, cfg, name))
                wait_until(
                    lambda: _request_state(cfg, event_id) == "CONFIRMED", timeout=60, message="confirmed"
                )
            honored = browser.get(cfg.web_gpc_path, headers={"Sec-GPC": "1", **FIREFOX})
            assert _state(honored.text) == "honored" and "Opt-Out Request Honored" in honored.text
            # Without the signal, the browser still sees that its opt-out stands.
            assert _state(browser.get(cfg.web_gpc_path).text) == "honored"
        # The partner got the device id's SHA-256, nothing else.
        held = httpx.get(f"{server.url}/partners/adnetwork/opt-outs").json()
    [opt_out] = held["opt_outs"]
    assert opt_out["device_id_sha256"] == sha256_hex(device_id)
    assert set(opt_out) == {"reference", "device_id_sha256"}
    assert all(device_id not in body for body in held["raw_bodies"])
    # Every applied signal is in the log, hashed; no raw id, no address.
    rows = _signals(cfg)
    assert [r[3] for r in rows] == [True, False, False]
    assert {(r[0], r[1], r[2], r[4]) for r in rows} == {
        ("device", subject_sha256("device", device_id), event_id, "Firefox")
    }


def test_resubscribe_then_unsubscribe_again_are_three_requests_intake_records(base_settings):
    cfg = isolated_settings(base_settings, **GENEROUS)
    link = mint_link(cfg, email="back@example.com", customer_id="c-back", scopes=[Scope.EMAIL_MARKETING])
    token = verify(keyring_from_settings(cfg), link.token, datetime.now(UTC), Purpose.UNSUBSCRIBE)
    opt_out_id = request_event_id(token, [Scope.EMAIL_MARKETING])
    opt_in_id = optin_event_id(token, [Scope.EMAIL_MARKETING])
    page_path = "/u/" + link.token
    with TestClient(create_app(cfg)) as client, running(run_intake, cfg, "intake"):
        assert "Resubscribe" not in client.get(page_path).text
        stopped = client.post("/u/choose", data={"t": link.token, "scope": "EMAIL_MARKETING"})
        assert stopped.status_code == 200
        wait_until(
            lambda: _request_state(cfg, opt_out_id) is not None, timeout=30, message="opt-out recorded"
        )
        page = client.get(page_path).text
        assert 'action="/u/resubscribe"' in page and 'value="EMAIL_MARKETING"' in page
        back = client.post("/u/resubscribe", data={"t": link.token, "scope": "EMAIL_MARKETING"})
        assert back.status_code == 200 and opt_in_id in back.text
        # Answered only once intake recorded it: a "stop again" right now gets a new id.
        assert _request_state(cfg, opt_in_id) is not None
        status = client.post("/u/status", data={"t": link.token}).text
        assert "Receive again: marketing email" in status and "Stop: marketing email" in status
        assert 'id="resub-email-marketing"' not in client.get(page_path).text
        # Stopping again through the same link is a new request, not the first opt-out again.
        again = client.post("/u/choose", data={"t": link.token, "scope": "EMAIL_MARKETING"})
        assert again.status_code == 200
        opt_out_again = request_event_id(token, [Scope.EMAIL_MARKETING], round_=1)
        wait_until(lambda: _request_state(cfg, opt_out_again) is not None, timeout=30, message="re-opt-out")
    records = [r.decoded() for r in read_topic(cfg, cfg.requests_topic, expect=3, settle=0.5)]
    assert [(r["event_id"], r["action"]) for r in records] == [
        (opt_out_id, "OPT_OUT"),
        (opt_in_id, "OPT_IN"),
        (opt_out_again, "OPT_OUT"),
    ]
    assert records[0]["requested_at"] < records[1]["requested_at"] < records[2]["requested_at"]
    assert read_topic(cfg, cfg.requests_dlq_topic, settle=0.2) == []


def test_gpc_log_cli_and_purge_keep_24_months_of_hashed_proof(database):
    now = datetime.now(UTC)
    with psycopg.connect(database["app"], autocommit=True) as conn:
        for days, kind, subject in (
            (1, "customer", "c-7"),
            (10, "device", "D" * 32),
            (800, "customer", "c-7"),
        ):
            conn.execute(
                "INSERT INTO gpc_signals (seen_at, subject_kind, subject_sha256, event_id, published,"
                " jurisdiction, user_agent_family) VALUES (%s, %s, %s, %s, true, NULL, 'Firefox')",
                (now - timedelta(days=days), kind, subject_sha256(kind, subject), f"ev-{days}"),
            )
    env = {"OPTOUT_DATABASE_URL": database["app"], "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    since = (now - timedelta(days=900)).date().isoformat()
    rows = list(csv.DictReader(io.StringIO(cli("gpc-log", "--since", since, "--format", "csv"))))
    assert [r["event_id"] for r in rows] == ["ev-800", "ev-10", "ev-1"]
    assert {r["request_state"] for r in rows} == {"NOT_RECEIVED"}
    assert "c-7" not in "".join(map(str, rows)) and "D" * 32 not in "".join(map(str, rows))
    mine = cli("gpc-log", "--since", since, "--customer-id", "c-7", "--format", "json")
    assert mine.count('"event_id"') == 2
    assert "would delete 1 GPC signal log row(s) older than 730 days" in cli("purge", "--dry-run")
    with psycopg.connect(database["app"]) as conn:
        assert purge_gpc_signals(conn, now, timedelta(days=730)) == 1
        assert purge_gpc_signals(conn, now, timedelta(days=730)) == 0
        left = conn.execute("SELECT event_id FROM gpc_signals ORDER BY seen_at").fetchall()
    assert [r[0] for r in left] == ["ev-10", "ev-1"]
