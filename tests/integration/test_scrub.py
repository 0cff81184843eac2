"""``optout scrub`` against the real database, the state made by intake from published
opt-outs and opt-ins: exactly the suppressed rows of a generated file are removed (raw
emails in any case and spacing, their SHA-256, customer ids), per scope or for any scope;
people who opted back in and invalid rows stay; the report says why."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.common.contract import Scope
from services.common.settings import Settings
from services.domain.identity import sha256_hex
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from services.suppression.scrub import scrub
from tests.support.pipeline import isolated_settings, running, wait_until

pytestmark = pytest.mark.integration

ROWS = 3000


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:8]


def _email(tag: str, i: int) -> str:
    return f"person{i}.{tag}@example.com"


@pytest.fixture
def cfg(base_settings: dict[str, Any], tag: str) -> Iterator[Settings]:
    """People 0-99 opted out of email marketing, 50-99 then back in; 100-119 opted out of
    third-party sharing only (with their customer id); everyone else never asked."""
    settings = isolated_settings(base_settings)
    now = datetime.now(UTC)
    publisher = RequestPublisher(settings)
    requests = []
    for i in range(100):
        requests.append({"email": _email(tag, i), "scopes": ["EMAIL_MARKETING"], "requested_at": now})
    for i in range(50, 100):
        later = now + timedelta(seconds=1)
        requests.append(
            {
                "email": _email(tag, i),
                "scopes": ["EMAIL_MARKETING"],
                "action": "OPT_IN",
                "requested_at": later,
            }
        )
    for i in range(100, 120):
        requests.append(
            {
                "email": _email(tag, i),
                "customer_id": f"c{i}-{tag}",
                "scopes": ["THIRD_PARTY_SHARING"],
                "requested_at": now,
            }
        )
    publisher.publish([publisher.prepare({"event_id": f"evt-{uuid.uuid4()}", **r}) for r in requests])
    with running(run_intake, settings, "intake"):

        def recorded() -> bool:
            with psycopg.connect(settings.dsn()) as conn:
                row = conn.execute("SELECT count(*) FROM requests").fetchone()
            return row is not None and row[0] >= len(requests)

        wait_until(recorded, timeout=90, message="the requests recorded")
    yield settings


def _audience(path: Path, tag: str, rows: int, hashed: bool = False) -> list[int]:
    """A CSV of ``rows`` people (the first 120 of them the people above, shuffled), a few
    invalid rows; returns the person number of each row (-1: invalid)."""
    rng = random.Random(7)
    people = list(range(rows))
    rng.shuffle(people)
    numbers: list[int] = []
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["first_name", "email_sha256" if hashed else "Email", "city"])
        for n, person in enumerate(people):
            if n % 997 == 5:
                writer.writerow(["Nobody", "not an email", "Nowhere"])
                numbers.append(-1)
            email = _email(tag, person)
            value = sha256_hex(email) if hashed else rng.choice([email, email.upper(), f"  {email} "])
            writer.writerow([f"Name {person}", value, 'Springfield, "IL"'])
            numbers.append(person)
    return numbers


def _kept(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [row[1] for row in csv.reader(handle)][1:]


def _scrub_by_scope(cfg: Settings, tag: str, tmp_path: Path, rows: int) -> None:
    source, target = tmp_path / "audience.csv", tmp_path / "clean.csv"
    numbers = _audience(source, tag, rows)
    report = scrub(cfg.dsn(), source, target, scope=Scope.EMAIL_MARKETING)
    suppressed = [n for n in numbers if 0 <= n < 50]
    assert (report.rows, report.removed, report.invalid) == (len(numbers), len(suppressed), numbers.count(-1))
    assert report.by_scope == {"EMAIL_MARKETING": 50}
    kept = _kept(target)
    assert len(kept) == report.kept == len(numbers) - 50
    assert not {_email(tag, i) for i in range(50)} & {k.strip().lower() for k in kept}
    assert {_email(tag, i) for i in range(50, 120)} <= {k.strip().lower() for k in kept}
    assert target.read_text().splitlines()[0] == "first_name,Email,city"


def test_scrub_of_100000_rows(cfg: Settings, tag: str, tmp_path: Path) -> None:
    _scrub_by_scope(cfg, tag, tmp_path, 100_000)


def test_scrub_removes_exactly_the_suppressed_rows(cfg: Settings, tag: str, tmp_path: Path) -> None:
    _scrub_by_scope(cfg, tag, tmp_path, ROWS)

    # Any scope (the default), through the command line, on a file of hashes, invalid rows dropped.
    hashed, out = tmp_path / "hashed.csv", tmp_path / "hashed-clean.csv"
    numbers = _audience(hashed, tag, ROWS, hashed=True)
    env = {**os.environ, "OPTOUT_DATABASE_URL": cfg.dsn()}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "scrub",
            "--in",
            str(hashed),
            "--out",
            str(out),
            "--json",
            "--drop-invalid",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["kind"] == "email_sha256"
    assert printed["removed"] == 70
    assert printed["removed_by_scope"] == {"EMAIL_MARKETING": 50, "THIRD_PARTY_SHARING": 20}
    assert printed["invalid"] == numbers.count(-1) and printed["invalid_reasons"] == {
        "invalid_email_sha256": numbers.count(-1)
    }
    assert len(_kept(out)) == len(numbers) - 70 - numbers.count(-1)
    assert "@" not in done.stderr + done.stdout  # no raw identifier printed
