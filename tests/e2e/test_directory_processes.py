"""Issue #12's "done when", with the services as processes: after `optout customers import`,
a request with only a customer id reaches the mail house with the directory's address (and
no log line of intake or the connector carries the address or an email)."""

from __future__ import annotations

import csv
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.publisher.publish import RequestPublisher
from tests.e2e.obs_support import ServiceProcesses
from tests.support.pipeline import isolated_settings, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("service-processes")]


def test_a_customer_id_alone_reaches_the_mail_house_with_the_address_on_file(
    base_settings: dict[str, Any], tmp_path: Path
) -> None:
    cfg = isolated_settings(base_settings)
    tag = uuid.uuid4().hex[:8]
    customer, email = f"cust-{tag}", f"dir.{tag}@example.com"
    name, line, city = f"Grace Directory{tag}", f"{tag} Lookup Lane", f"Enrichville{tag}"
    directory = tmp_path / "customers.csv"
    with directory.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["customer_id", "email", "name", "address_line1", "city", "postal_code", "country"])
        out.writerow([customer, email, name, line, city, "02142", "US"])
    imported = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "customers", "import", str(directory)],
        env={"OPTOUT_DATABASE_URL": cfg.dsn(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("imported 1 customer(s) (1 emails, 0 phones, 1 postal addresses)")

    services = ServiceProcesses(cfg, tmp_path)
    started = [services.start("intake"), services.start("connector", "mail_house")]
    try:
        for proc in started:
            services.wait_ready(proc)
        publisher = RequestPublisher(cfg)
        request = publisher.prepare({"customer_id": customer, "scopes": ["ALL"], "source": "WEB_FORM"})
        publisher.publish([request])

        def mailed() -> list[dict[str, str]]:
            return [
                row
                for f in (tmp_path / "mail_house").glob("suppressions-*.csv")
                for row in csv.DictReader(f.open(newline=""))
                if row["request_id"] == request.record["event_id"]
            ]

        wait_until(lambda: bool(mailed()), timeout=60, message="the mail house's file has the request")
    finally:
        codes = services.stop_all()
    assert set(codes.values()) == {0}, codes
    [row] = mailed()
    assert (row["name"], row["address_line_1"], row["city"], row["postal_code"], row["customer_id"]) == (
        name.upper(),
        line.upper(),
        city.upper(),
        "02142",
        customer,
    )
    leaks = [
        entry
        for entry in services.log_lines()
        if any(n.lower() in entry[2].lower() for n in (email, line, name))
    ]
    assert not leaks, leaks[:3]
