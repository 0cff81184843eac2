"""The customer directory on the real database and broker: `optout customers import`, then a
request with only a customer id reaches the mail house with the directory's address and the
email provider with every address on file; what was added is recorded, and purged."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from services.cli.main import main
from services.common.sealing import KeyRing
from services.common.settings import PartnerEndpoint, Settings, settings
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.directory.store import upsert_entries
from services.domain.enrichment import DirectoryEntry
from services.domain.identity import sha256_hex
from services.domain.validation import OptOutRequest, validate_request
from services.intake.enrich import DatabaseDirectory
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.partners_api import PartnersStandin
from services.standins.web import StandinServer
from services.suppression.entries import suppression_ring
from tests.integration.test_purge import _pg_dump, _purge_now
from tests.support.pipeline import isolated_settings, running, wait_until

pytestmark = pytest.mark.integration

HEADER = "customer_id,email,phone,name,address_line1,address_line2,city,region,postal_code,country\n"


def _import(database: dict[str, str], path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "customers", "import", str(path), *extra],
        env={"OPTOUT_DATABASE_URL": database["app"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database: dict[str, str], *args: str
) -> tuple[int, str, str]:
    """``optout ARGS`` in this process (no interpreter start-up): exit status, stdout, stderr."""
    monkeypatch.setenv("OPTOUT_DATABASE_URL", database["app"])
    settings.cache_clear()
    try:
        capsys.readouterr()
        status = main(list(args))
        captured = capsys.readouterr()
    finally:
        settings.cache_clear()
    return status, captured.out, captured.err


def test_import_reports_bad_rows_by_line_and_reimporting_replaces_each_customer(
    database: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(
        HEADER
        + "c-1,Ada@Example.com,(415) 555-0123,Ada Lovelace,1 Main St,,Springfield,IL,62701,US\n"
        + "c-1,ada.work@example.org,,,,,,,,\n"
        + "c-2,not-an-email,,,,,,,,\n"
        + "c-3,carol@example.com,,,,,,,,\n"
    )
    done = _import(database, path)
    assert done.returncode == 1, done.stderr  # a bad row: the others are imported
    assert done.stderr.splitlines() == [
        f"{path}: line 4: invalid_email: not a single-@ address of at most 254 characters"
    ]
    assert "imported 2 customer(s) (3 emails, 1 phones, 1 postal addresses) from 4 row(s)" in done.stdout
    assert "1 bad row(s), 1 customer(s) left as they were" in done.stdout

    def stored() -> dict[str, Any]:
        with psycopg.connect(database["app"]) as conn:
            rows = conn.execute("SELECT customer_id, sealed, identifiers FROM customer_directory").fetchall()
            keys = conn.execute(
                "SELECT kind, sha256, customer_id FROM customer_directory_keys ORDER BY 1, 2"
            ).fetchall()
        return {"rows": {r[0]: (r[1], r[2]) for r in rows}, "keys": keys}

    first = stored()
    assert set(first["rows"]) == {"c-1", "c-3"} and first["rows"]["c-1"][1] == 4
    assert ("email", sha256_hex("ada@example.com"), "c-1") in first["keys"]
    assert all("ada" not in sealed and "Main" not in sealed for sealed, _ in first["rows"].values())

    # The same file again: the same directory (new nonces, same keys).
    assert _in_process(monkeypatch, capsys, database, "customers", "import", str(path))[0] == 1
    again = stored()
    assert again["keys"] == first["keys"] and {k: v[1] for k, v in again["rows"].items()} == {
        "c-1": 4,
        "c-3": 1,
    }

    # A customer in a new file replaces what was stored for it; others stay.
    path.write_text(HEADER + "c-1,ada.new@example.net,,,,,,,,\n")
    assert _in_process(monkeypatch, capsys, database, "customers", "import", str(path))[0] == 0
    third = stored()
    assert third["rows"]["c-1"][1] == 1 and "c-3" in third["rows"]
    assert [k for k in third["keys"] if k[2] == "c-1"] == [
        ("email", sha256_hex("ada.new@example.net"), "c-1")
    ]

    status, out, _ = _in_process(monkeypatch, capsys, database, "customers", "status")
    assert status == 0 and "customers: 2 (2 emails" in out


def test_a_request_with_only_a_customer_id_reaches_the_mail_house_with_the_address_on_file(
    base_settings: dict[str, Any],
    database: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = uuid.uuid4().hex[:8]
    customer = f"cust-{tag}"
    emails = [f"home.{tag}@example.com", f"work.{tag}@example.org"]
    name, line, city = f"Ada Directory{tag}", f"{tag} Enrichment Road", f"Lookupton{tag}"
    path = tmp_path / "customers.csv"
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(HEADER.strip().split(","))
        out.writerow([customer, emails[0], "", name, line, "", city, "", "SW1A 1AA", "GB"])
        out.writerow([customer, emails[1], "", "", "", "", "", "", "", ""])
        out.writerow([f"other-{tag}", f"other.{tag}@example.com", "", "", "", "", "", "", "", ""])
    assert _in_process(monkeypatch, capsys, database, "customers", "import", str(path))[0] == 0

    mail_dir = tmp_path / "mail_house"
    esp = EmailProviderStandin(token="dir-esp-token")
    tokens = {"adnetwork": "tok-a", "databroker": "tok-b"}
    with (
        StandinServer(esp.handle, name="email_provider") as esp_server,
        StandinServer(PartnersStandin(tokens).handle, name="partners") as partners_server,
    ):
        cfg = isolated_settings(
            base_settings,
            mail_house_dir=str(mail_dir),
            email_provider_url=esp_server.url,
            email_provider_token=SecretStr("dir-esp-token"),
            partners=[
                PartnerEndpoint(name=n, url=f"{partners_server.url}/partners/{n}", token=SecretStr(t))
                for n, t in tokens.items()
            ],
        )
        publisher = RequestPublisher(cfg)
        [prepared] = [publisher.prepare({"customer_id": customer, "scopes": ["ALL"]})]
        publisher.publish([prepared])
        event_id = prepared.record["event_id"]

        def confirmed() -> bool:
            with psycopg.connect(cfg.dsn()) as conn:
                row = conn.execute("SELECT state FROM requests WHERE event_id = %s", (event_id,)).fetchone()
            return row is not None and row[0] == "CONFIRMED"

        services = [("intake", run_intake), ("confirmer", run_confirmer)] + [
            (n, connector_runner(n, cfg)) for n in ("email_provider", "mail_house", "third_party_sharing")
        ]
        with contextlib.ExitStack() as stack:
            for service, main in services:
                stack.enter_context(running(main, cfg, service))
            wait_until(confirmed, timeout=60, message="the customer-id-only request confirmed")

    # The mail house's file has the directory's address; the email provider has both addresses.
    [day_file] = list(mail_dir.glob("suppressions-*.csv"))
    rows = list(csv.DictReader(day_file.open(newline="")))
    assert [(r["request_id"], r["name"], r["address_line_1"], r["city"], r["customer_id"]) for r in rows] == [
        (event_id, name.upper(), line.upper(), city.upper(), customer)
    ]
    assert sorted(e for e in esp.suppressed if tag in e) == sorted(emails)

    with psycopg.connect(cfg.dsn()) as conn:
        destinations = conn.execute(
            "SELECT destination, status FROM destination_status WHERE event_id = %s ORDER BY 1", (event_id,)
        ).fetchall()
        sources = conn.execute(
            "SELECT identifier_sources FROM requests WHERE event_id = %s", (event_id,)
        ).fetchone()
        listed = conn.execute("SELECT kind, sha256 FROM suppression_list").fetchall()
    assert [d for d, _ in destinations].count("email_provider") == 2  # one command per address
    assert {d for d, _ in destinations} == {"email_provider", "mail_house", "third_party_sharing"}
    assert sources is not None
    assert {(s["kind"], s["source"]) for s in sources[0]} == {
        ("customer_id", "request"),
        ("email", "directory"),
        ("postal", "directory"),
    }
    assert {("email", sha256_hex(e)) for e in emails} <= set(listed)  # suppressed too

    # Purged like the rest: afterwards no value of the directory is anywhere in the database
    # (the directory itself is encrypted; the request loses what was added).
    secrets = [*emails, f"home.{tag}", f"work.{tag}", name, line, city, f"other.{tag}"]
    before = _pg_dump(database)
    assert emails[1] in before and line in before  # the request's added identifiers, until purged
    _purge_now(database, tmp_path / "nothing-here")
    after = _pg_dump(database)
    assert event_id in after and customer in after
    assert [s for s in secrets if s.lower() in after.lower()] == []
    assert sha256_hex(emails[1]) in after  # hashes stay, as proof

    # Erasing the customer also erases the entries of the identifiers the directory added.
    status, out, _ = _in_process(monkeypatch, capsys, database, "erase", "--customer-id", customer)
    assert status == 0, out
    with psycopg.connect(cfg.dsn()) as conn:
        left = set(conn.execute("SELECT kind, sha256 FROM suppression_list").fetchall())
    assert not {("email", sha256_hex(e)) for e in emails} & left


_UNREADABLE = "optout_directory_unreadable_entries_total"


def _opt_out(customer_id: str) -> OptOutRequest:
    now = datetime.now(UTC)
    record = {
        "event_id": f"e-{customer_id}",
        "customer_id": customer_id,
        "scopes": ["ALL"],
        "requested_at": now,
    }
    return validate_request(record, now, timedelta(minutes=5))


@pytest.mark.expected_errors("customer directory entry cannot be decrypted")
def test_intake_skips_an_entry_it_cannot_decrypt_and_enriches_the_others(
    base_settings: dict[str, Any],
) -> None:
    cfg = Settings(**base_settings)
    ring = suppression_ring(cfg)
    retired = KeyRing({"retired": os.urandom(32)}, "retired")  # a key no longer in the ring
    now = datetime.now(UTC)
    with psycopg.connect(cfg.dsn()) as conn:
        upsert_entries(conn, retired, [DirectoryEntry("c-old", ("old@example.com",))], now)
        upsert_entries(conn, ring, [DirectoryEntry("c-new", ("new@example.com",))], now)
    directory = DatabaseDirectory(cfg, ring)
    try:
        before = REGISTRY.get_sample_value(_UNREADABLE) or 0.0
        old, new = directory.enrich([_opt_out("c-old"), _opt_out("c-new")])
    finally:
        directory.close()
    assert old.enrichment is None
    assert new.enrichment is not None and new.enrichment.emails == ("new@example.com",)
    assert REGISTRY.get_sample_value(_UNREADABLE) == before + 1


def test_while_the_directory_is_empty_intake_makes_no_query(base_settings: dict[str, Any]) -> None:
    cfg = Settings(**base_settings, directory_check_seconds=30)
    ring = suppression_ring(cfg)
    clock = [1000.0]
    directory = DatabaseDirectory(cfg, ring, monotonic=lambda: clock[0])
    try:
        assert directory.enrich([_opt_out("c-1")])[0].enrichment is None  # empty: noted
        with psycopg.connect(cfg.dsn()) as conn:
            upsert_entries(conn, ring, [DirectoryEntry("c-1", ("one@example.com",))], datetime.now(UTC))
        clock[0] += 29  # still believed empty: not even looked up
        assert directory.enrich([_opt_out("c-1")])[0].enrichment is None
        clock[0] += 2  # checked again: found
        enriched = directory.enrich([_opt_out("c-1")])[0].enrichment
        assert enriched is not None and enriched.emails == ("one@example.com",)
    finally:
        directory.close()
