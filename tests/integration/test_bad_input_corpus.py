"""A corpus of hostile messages into a running intake: each lands in the DLQ with its
reason or is recorded exactly as sent; the service never stops and nothing around the
bad messages is lost."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest

from services.common.avro import default_codec
from services.common.kafka import make_producer
from services.intake.service import run as run_intake
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration

SQLI = "'; DROP TABLE requests; --"
CONTROL = "a\x01b\x1b[31mred\x7f\u202eevil\u200b"
RTL = "محمد بن سلمان \u05e9\u05dc\u05d5\u05dd 🙂 Zoë"


def _record(now: datetime, **overrides):
    record = {
        "event_id": str(uuid.uuid4()),
        "customer_id": None,
        "email": "ok@example.com",
        "phone": None,
        "postal_address": None,
        "scopes": ["ALL"],
        "source": "API",
        "jurisdiction": None,
        "requested_at": now,
    }
    record.update(overrides)
    return record


def _address(value: str):
    return {
        "name": value,
        "lines": [value, "2 " + value],
        "city": value,
        "region": value[:50],
        "postal_code": "12345",
        "country": "US",
    }


def test_hostile_corpus(base_settings):
    cfg = isolated_settings(base_settings, batch_size=200)
    codec = default_codec()
    now = datetime.now(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # Avro timestamp-millis
    rng = random.Random(20261129)
    enc = lambda **kw: codec.encode("OptOutRequested", _record(now, **kw))  # noqa: E731

    dlq_cases: list[tuple[bytes | None, bytes, str]] = [
        *[(f"rand{n}".encode(), rng.randbytes(n), "undecodable") for n in (1, 9, 64, 4096)],
        (b"trunc", enc()[:-3], "undecodable"),
        (b"fp", b"\xc3\x01" + rng.randbytes(8) + enc()[10:], "unknown_fingerprint"),
        (b"empty", b"", "empty_value"),
        (b"huge", b"\xc3\x01" + b"\x00" * 999_998, "unknown_fingerprint"),
        (b"huge-field", enc(customer_id="x" * 900_000), "field_too_long"),
        (b"noid", enc(email=None), "no_identifier"),
        (b"email1", enc(email="plainaddress"), "invalid_email"),
        (b"email2", enc(email=f"{SQLI}@example.com"), "invalid_email"),
        (b"email3", enc(email="a@b@c.com"), "invalid_email"),
        (b"phone1", enc(phone="+1 (555) ☎☎☎"), "invalid_phone"),
        (b"phone2", enc(phone=SQLI), "invalid_phone"),
        (b"nul", enc(customer_id="abc\x00def"), "invalid_characters"),
        (b"future", enc(requested_at=datetime(3000, 1, 1, tzinfo=UTC)), "requested_at_in_future"),
        (b"scopes", enc(scopes=[]), "empty_scopes"),
        (b"postal", enc(scopes=["POSTAL_MARKETING"]), "missing_identifier_for_scope"),
    ]
    recorded: dict[str, dict] = {
        # kept exactly as sent (parameterised SQL, text columns)
        "sqli": _record(now, customer_id=SQLI, jurisdiction="US-CA", postal_address=_address(SQLI)),
        "control": _record(now, customer_id=CONTROL, postal_address=_address(CONTROL)),
        "rtl": _record(now, customer_id=RTL, postal_address=_address(RTL)),
        "past": _record(now, requested_at=datetime(1971, 1, 1, tzinfo=UTC)),
        "nullkey": _record(now),
    }
    conflict_id = str(uuid.uuid4())
    first = enc(event_id=conflict_id, email="first@example.com")
    conflict = enc(event_id=conflict_id, email="second@example.com")

    producer = make_producer(cfg, **{"message.max.bytes": 2_000_000})
    good_ids = []
    for key, value, _ in dlq_cases:
        ok = _record(now)
        good_ids.append(ok["event_id"])
        producer.produce(cfg.requests_topic, key=b"good", value=codec.encode("OptOutRequested", ok))
        producer.produce(cfg.requests_topic, key=key, value=value)
    for name, record in recorded.items():
        producer.produce(
            cfg.requests_topic,
            key=None if name == "nullkey" else name.encode(),
            value=codec.encode("OptOutRequested", record),
        )
    producer.produce(cfg.requests_topic, key=b"c", value=first)
    assert producer.flush(30) == 0

    ids = good_ids + [r["event_id"] for r in recorded.values()] + [conflict_id]
    with running(run_intake, cfg, "intake"):
        wait_until(lambda: _recorded(cfg, ids) == len(ids), timeout=90, message="good events")
        producer.produce(cfg.requests_topic, key=b"c", value=conflict)
        producer.flush(10)
        dlq = read_topic(cfg, cfg.requests_dlq_topic, expect=len(dlq_cases) + 1, timeout=90)
        # The service is still consuming after all that: one more good event goes through.
        late = _record(now)
        producer.produce(cfg.requests_topic, key=b"late", value=codec.encode("OptOutRequested", late))
        producer.flush(10)
        wait_until(lambda: _recorded(cfg, [late["event_id"]]) == 1, message="late event")

    reasons = {r.key: r.headers["optout.dlq.reason"] for r in dlq}
    for key, _, reason in dlq_cases:
        assert reasons.get(key) == reason, (key, reasons.get(key), reason)
    assert reasons[b"c"] == "duplicate_event_id_conflict"
    assert len(dlq) == len(dlq_cases) + 1
    huge = next(r for r in dlq if r.key == b"huge")
    assert huge.headers["optout.dlq.truncated_from_bytes"] == "1000000"
    small = next(r for r in dlq if r.key == b"trunc")
    assert small.value == dict((k, v) for k, v, _ in dlq_cases)[b"trunc"]  # bytes unchanged

    with psycopg.connect(cfg.dsn()) as conn:
        for record in recorded.values():
            row = conn.execute(
                "SELECT customer_id, postal_address->>'name', jurisdiction, requested_at "
                "FROM requests WHERE event_id = %s",
                (record["event_id"],),
            ).fetchone()
            assert row is not None
            assert row[0] == record["customer_id"]
            if record["postal_address"]:
                assert row[1] == " ".join(record["postal_address"]["name"].split())
            assert row[3] == record["requested_at"]
        assert conn.execute("SELECT to_regclass('requests')").fetchone() == ("requests",)
        overdue = conn.execute(
            "SELECT due_at < now() FROM requests WHERE event_id = %s", (recorded["past"]["event_id"],)
        ).fetchone()
        assert overdue == (True,)
        email = conn.execute("SELECT email FROM requests WHERE event_id = %s", (conflict_id,)).fetchone()
        assert email == ("first@example.com",)
    assert Counter(reasons.values())["undecodable"] == 5


def _recorded(cfg, ids: list[str]) -> int:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM requests WHERE event_id = ANY(%s)", (ids,)).fetchone()
    return row[0] if row else 0
