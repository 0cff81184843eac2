"""``optout run lookup`` as a process: it serves with PostgreSQL alone (the broker address is
unreachable on purpose), is ready on /readyz, counts in /metrics, refuses wrong keys, stops
on SIGTERM; and it refuses to start with a key too short to be one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.support.pipeline import free_port, wait_until

pytestmark = pytest.mark.integration

KEY = "service-test-key-0123456789"


def _env(base_settings: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPTOUT_DATABASE_URL": str(base_settings["database_url"]),
        "OPTOUT_KAFKA_BOOTSTRAP": "127.0.0.1:1",  # nothing there: the lookup API needs no broker
        "OPTOUT_LOG_FORMAT": "json",
        **extra,
    }


def test_serves_with_the_database_alone(base_settings: dict[str, Any]) -> None:
    port, metrics = free_port(), free_port()
    env = _env(
        base_settings,
        OPTOUT_LOOKUP_PORT=str(port),
        OPTOUT_METRICS_PORT=str(metrics),
        OPTOUT_LOOKUP_API_KEYS=json.dumps([KEY]),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", "lookup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return httpx.get(f"http://127.0.0.1:{metrics}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=120, message="optout run lookup ready")
        url = f"http://127.0.0.1:{port}/v1/suppressions"
        params = {"email": "someone@example.com"}
        assert httpx.get(url, params=params, timeout=5).status_code == 401
        answer = httpx.get(url, params=params, headers={"x-api-key": KEY}, timeout=5)
        assert answer.status_code == 200 and answer.json()["suppressed"] is False
        scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
        assert 'optout_lookup_requests_total{outcome="unauthorized",route="lookup"} 1.0' in scraped
        assert 'optout_lookup_requests_total{outcome="ok",route="lookup"} 1.0' in scraped
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, output
    assert "someone@example.com" not in output  # raw identifiers are never logged


def test_refuses_a_short_key(base_settings: dict[str, Any]) -> None:
    env = _env(base_settings, OPTOUT_LOOKUP_PORT=str(free_port()), OPTOUT_LOOKUP_API_KEYS='["short"]')
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "run", "lookup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "optout: OPTOUT_LOOKUP_API_KEYS needs at least one key, each of 16 characters or more "
        '(a JSON list: ["key1", "key2"])'
    ]
