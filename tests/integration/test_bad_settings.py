"""A wrong broker address, a database that is down or a bad setting ends with one clear
line and a non-zero exit within 30 seconds: never a hang, never a wall of traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _run(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env={**os.environ, "OPTOUT_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        ({"OPTOUT_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, ("run", "intake"), "OPTOUT_KAFKA_BOOTSTRAP"),
        (
            {"OPTOUT_DATABASE_URL": "postgresql://optout_app:x@127.0.0.1:1/optout"},
            ("run", "confirmer"),
            "OPTOUT_DATABASE_URL",
        ),
        ({"OPTOUT_BATCH_SIZE": "many"}, ("run", "intake"), "OPTOUT_BATCH_SIZE"),
        ({"OPTOUT_KAFKA_EXTRA": "{not json"}, ("topics", "create"), "OPTOUT_KAFKA_EXTRA"),
        ({}, ("run", "connector", "fax_machine"), "fax_machine"),
        # Nobody would be told, yet every command would be acknowledged APPLIED.
        ({"OPTOUT_PARTNERS": "[]"}, ("run", "connector", "third_party_sharing"), "OPTOUT_PARTNERS"),
        ({"OPTOUT_ENV": "production"}, ("run", "intake"), "OPTOUT_EMAIL_PROVIDER_TOKEN"),
    ],
)
def test_one_clear_line_and_a_non_zero_exit(stack, database, env, args, says):
    code, stderr, seconds = _run(
        {"OPTOUT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "OPTOUT_DATABASE_URL": database["app"], **env},
        *args,
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0
    assert seconds < 30
    assert len(lines) == 1, stderr
    assert lines[0].startswith("optout: ") and says in lines[0]
    assert "Traceback" not in stderr
