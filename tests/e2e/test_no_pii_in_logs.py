"""Real-looking personal data through the whole pipeline; not one log line may carry it
(issue: observability). Every service runs as its own ``optout run`` process with
production logging (JSON lines on stdout) at debug level (one line per message), and
every line of stdout and stderr is searched for the raw email addresses, phone numbers
and postal addresses, in the spellings a log could plausibly contain."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.common.avro import default_codec
from services.common.kafka import make_producer
from services.observability.group_lag import pipeline_groups
from services.publisher.publish import RequestPublisher
from tests.e2e.obs_support import ServiceProcesses, json_lines
from tests.support.pipeline import isolated_settings, read_topic, wait_committed, wait_until

# Services as separate processes (and a browser): one such test at a time on one worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("service-processes")]

PEOPLE: list[dict[str, Any]] = [
    {
        "email": "Margaret.Hamilton1936@apollo-guidance.example",
        "phone": "+1 (617) 555-0142",
        "address": {
            "name": "Margaret Hamilton",
            "lines": ["1 Memorial Drive", "Apt 17B"],
            "city": "Cambridge",
            "region": "MA",
            "postal_code": "02142",
            "country": "US",
        },
    },
    {
        "email": "grace.hopper+cobol@navy-research.example",
        "phone": "+44 20 7946 0958",
        "address": {
            "name": "Grace Brewster Hopper",
            "lines": ["221B Baker Street"],
            "city": "Marylebone",
            "region": None,
            "postal_code": "NW1 6XE",
            "country": "GB",
        },
    },
    {
        "email": "katherine_johnson@langley-nasa.example",
        "phone": "(757) 555-0199",
        "address": {
            "name": "Katherine Coleman Johnson",
            "lines": ["4 Hampton Roads Parkway"],
            "city": "Hampton",
            "region": "VA",
            "postal_code": "23666",
            "country": "US",
        },
    },
]


def needles(person: dict[str, Any]) -> list[str]:
    """Spellings of this person's data that must never be logged."""
    email, phone, address = person["email"], person["phone"], person["address"]
    digits = "".join(c for c in phone if c.isdigit())
    out = [
        email,
        email.lower(),
        email.split("@")[0].lower(),
        phone,
        digits[-10:],
        address["name"],
        *address["lines"],
        address["postal_code"],
    ]
    if phone.startswith("("):
        out.append("+1" + digits)
    else:
        out.append("+" + digits)
    return [n for n in out if len(n) >= 5]


def test_no_log_line_of_any_service_contains_pii(base_settings: dict[str, Any], tmp_path: Path):
    cfg = isolated_settings(base_settings)
    services = ServiceProcesses(cfg, tmp_path)
    started = [
        services.start("standins"),
        services.start("intake"),
        services.start("confirmer"),
        *(services.start("connector", d) for d in cfg.destinations.names),  # incl. sms_sender
        services.start("exporter"),
    ]
    try:
        for proc in started:
            if proc.name != "standins":
                services.wait_ready(proc)

        publisher = RequestPublisher(cfg)
        good = []
        for i, person in enumerate(PEOPLE * 4):
            good.append(
                publisher.prepare(
                    {
                        "event_id": f"evt-{uuid.uuid4()}",
                        "customer_id": f"C-{i}",
                        "email": person["email"],
                        "phone": person["phone"],
                        "postal_address": person["address"],
                        "scopes": ["ALL"],
                        "source": "WEB_FORM",
                    }
                )
            )
        publisher.publish(good)
        # Poison carrying PII: not Avro at all, and Avro with an unusable address.
        producer = make_producer(cfg)
        person = PEOPLE[0]
        producer.produce(
            cfg.requests_topic,
            key=b"junk",
            value=f'{{"email": "{person["email"]}", "phone": "{person["phone"]}"}}'.encode(),
        )
        broken = {
            **good[1].record,
            "event_id": f"evt-{uuid.uuid4()}",
            "postal_address": {**PEOPLE[1]["address"], "lines": [], "country": "GB"},
        }
        producer.produce(
            cfg.requests_topic, key=b"junk", value=default_codec().encode("OptOutRequested", broken)
        )
        producer.flush(10)

        ids = [p.record["event_id"] for p in good]

        def confirmed() -> int:
            with psycopg.connect(cfg.dsn()) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM requests WHERE event_id = ANY(%s) AND state = 'CONFIRMED'", (ids,)
                ).fetchone()
            return int(row[0]) if row else 0

        wait_until(lambda: confirmed() == len(ids), timeout=180, message="every request confirmed")
        dead = read_topic(cfg, cfg.requests_dlq_topic, expect=2)
        assert len(dead) == 2
        # Every service committed everything it consumed: it has processed and logged it all.
        wait_committed(cfg, {spec.group: spec.topics for spec in pipeline_groups(cfg)}, timeout=60)
    finally:
        codes = services.stop_all()
    assert set(codes.values()) == {0}, codes

    lines = services.log_lines()
    parsed = json_lines(lines)
    events = [line.get("event") for line in parsed]
    # The logs are real: every service logged, per batch at info and per message at debug.
    assert {p.name for p in started} <= {name for name, _, _ in lines}
    assert "batch recorded" in events and "message received" in events
    assert sum(1 for e in events if e == "message received") >= len(ids)
    assert all("level" in line and "timestamp" in line for line in parsed)

    # The search finds these spellings where they legitimately are: the mail house's file.
    suppression_file = "".join(f.read_text() for f in (tmp_path / "mail_house").glob("*.csv")).lower()
    assert all(line.lower() in suppression_file for p in PEOPLE for line in p["address"]["lines"])

    leaks = [
        (name, stream, needle, line[:300])
        for person in PEOPLE
        for needle in needles(person)
        for name, stream, line in lines
        if needle.lower() in line.lower()
    ]
    assert not leaks, f"{len(leaks)} log line(s) carry PII, first: {leaks[:3]}"
