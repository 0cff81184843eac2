"""Shared helpers of the benchmarks: an isolated environment on the real stack (a fresh
database and fresh topics), a fast preloader of realistic OptOutRequested events, and
timing/reporting helpers.

Everything runs against the real Kafka broker and PostgreSQL server that
``services.devstack.ensure_up()`` starts or reuses; nothing is faked.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from psycopg import sql
from pydantic import SecretStr

from services.common.avro import Codec, default_codec
from services.common.contract import Identifier, Scope, Source
from services.common.db import migrate
from services.common.destinations import load_destinations
from services.common.kafka import create_topics, make_admin, make_producer
from services.common.logging import configure_logging
from services.common.settings import Settings
from services.devstack import StackInfo, ensure_up
from services.devstack.prune import left_by_runs
from services.domain.identity import subject_key
from services.domain.planning import plan_commands
from services.domain.validation import normalize_postal_address, postal_key, validate_request
from tests.faults.environment import drop_topics

APP_ROLE = "optout_app"


# --- output ---------------------------------------------------------------------------------
def setup_logging(level: str = "warning") -> None:
    """Service logs (and devstack's) go to stderr, so stdout carries only the report."""
    configure_logging(level=level, fmt="console")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


def note(text: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class Progress:
    """Rate-limited progress lines on stderr for one phase."""

    def __init__(self, label: str, total: int, interval: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.interval = interval
        self.started = time.monotonic()
        self._last = self.started

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        note(f"{self.label}: {done}/{self.total} events, {done / elapsed:,.0f} ev/s so far")


@dataclass(frozen=True)
class Measurement:
    name: str
    events: int
    seconds: float
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def format_table(rows: Sequence[Measurement], baseline: Measurement | None = None) -> list[str]:
    """Aligned text table; with ``baseline``, a column of each rate divided by its rate."""
    header = f"{'run':<34} {'events':>9} {'seconds':>9} {'events/s':>11}"
    if baseline is not None:
        header += f" {'x ' + baseline.name.split()[0]:>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = f"{row.name:<34} {row.events:>9,} {row.seconds:>9.2f} {row.rate:>11,.0f}"
        if baseline is not None:
            ratio = row.rate / baseline.rate if baseline.rate else 0.0
            line += f" {ratio:>9.2f}x"
        if row.detail:
            line += f"  {row.detail}"
        lines.append(line)
    return lines


# --- an isolated environment on the real stack ------------------------------------------------
@dataclass
class BenchEnv:
    """A fresh migrated database and a fresh set of topics (unique prefix) for one run."""

    settings: Settings
    database: str
    superuser_url: str

    def dsn(self) -> str:
        return self.settings.dsn()

    def suppress_topics(self) -> list[str]:
        return [self.settings.suppress_topic(d.id) for d in self.settings.destinations]


def _with_dbname(url: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=name)


def start_stack() -> StackInfo:
    info = ensure_up()
    if not info.superuser_database_url:
        raise SystemExit(
            "the benchmark creates its own database and needs the local devstack PostgreSQL "
            "(superuser access); unset OPTOUT_DATABASE_URL to use it"
        )
    note_broker_topics(info)
    return info


def note_broker_topics(info: StackInfo) -> None:
    """Say how many topics the broker serves, and how many of them killed test or benchmark
    runs left: thousands of leftover partitions cost the broker CPU in every run after."""
    try:
        metadata = make_admin(Settings(kafka_bootstrap=info.kafka_bootstrap)).list_topics(timeout=30).topics
    except KafkaException as exc:
        note(f"broker: could not list its topics ({exc.args[0].str()})")
        return
    left = left_by_runs(metadata)
    line = f"broker: {len(metadata)} topics, {sum(len(t.partitions) for t in metadata.values()):,} partitions"
    if left:
        line += f"; {len(left)} of them left by earlier test or benchmark runs"
        if info.kafka_brokers:
            line += " (python -m services.devstack prune deletes them)"
    note(line)


def open_env(stack: StackInfo, label: str, partitions: int, **overrides: Any) -> BenchEnv:
    """Create database ``optout_bench_<random>`` (migrated) and every topic under a unique
    prefix, ``partitions`` partitions each. ``overrides`` go to ``Settings``."""
    superuser = stack.superuser_database_url or ""
    name = f"optout_bench_{uuid.uuid4().hex[:8]}"
    admin_user = str(psycopg.conninfo.conninfo_to_dict(stack.admin_database_url)["user"])
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(admin_user))
        )
    admin_url = _with_dbname(stack.admin_database_url, name)
    migrate(admin_url, APP_ROLE)
    settings = Settings(
        kafka_bootstrap=stack.kafka_bootstrap,
        database_url=SecretStr(_with_dbname(stack.database_url, name)),
        admin_database_url=SecretStr(admin_url),
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.{label}.",
        topic_partitions=partitions,
        **overrides,
    )
    create_topics(settings, settings.all_topics(), partitions=partitions)
    return BenchEnv(settings, name, superuser)


def close_env(env: BenchEnv) -> None:
    """Delete this environment's topics and drop its database (only what it created)."""
    try:
        drop_topics(env.settings)
    except KafkaException as exc:
        note(f"could not delete the topics of {env.settings.topic_prefix}*: {exc}")
    with psycopg.connect(env.superuser_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(env.database)))


def count_rows(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


class EndOffsets:
    """Sum of the high watermarks of some topics: how many messages were delivered to them."""

    def __init__(self, settings: Settings, topics: Sequence[str]) -> None:
        self.consumer = Consumer(
            {
                **settings.kafka_config(),
                "group.id": f"bench-watch-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        metadata = self.consumer.list_topics(timeout=10)
        self.partitions = [TopicPartition(t, p) for t in topics for p in metadata.topics[t].partitions]

    def total(self) -> int:
        return sum(
            self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.partitions
        )

    def close(self) -> None:
        self.consumer.close()


# --- realistic events -----------------------------------------------------------------------
_FIRST = (
    "Ada",
    "Grace",
    "Alan",
    "Maria",
    "José",
    "Chen",
    "Priya",
    "Olu",
    "Sven",
    "Fatima",
    "Liam",
    "Noah",
    "Emma",
    "Sofia",
    "Yuki",
    "Ivan",
    "Aisha",
    "Lucas",
    "Mia",
    "Omar",
)
_LAST = (
    "Lovelace",
    "Hopper",
    "Turing",
    "García",
    "Nguyen",
    "Smith",
    "Müller",
    "Okafor",
    "Patel",
    "Kowalski",
    "Johnson",
    "Rossi",
    "Tanaka",
    "Dubois",
    "Andersson",
    "Haddad",
    "Silva",
    "Brown",
)
_DOMAINS = ("example.com", "example.org", "mail.example.net", "example.co.uk", "example.de")
_STREETS = (
    "Main St",
    "Oak Avenue",
    "High Street",
    "Baker Street",
    "Rue de Rivoli",
    "Hauptstraße",
    "Elm Road",
    "Market St",
)
# (city, region, postal code pattern, country): '9' becomes a random digit.
_CITIES = (
    ("San Francisco", "CA", "941", "US"),
    ("Sacramento", "CA", "958", "US"),
    ("Austin", "TX", "787", "US"),
    ("New York", "NY", "100", "US"),
    ("London", None, "SW1A 1AA", "GB"),
    ("Berlin", None, "101", "DE"),
    ("Paris", None, "750", "FR"),
)
_JURISDICTIONS: tuple[tuple[str | None, int], ...] = (
    ("US-CA", 25),
    ("US", 30),
    ("DE", 8),
    ("GB", 7),
    ("FR", 5),
    ("EU", 5),
    (None, 20),
)
_SOURCES = tuple(s.value for s in Source)


@dataclass(frozen=True)
class GeneratedEvent:
    key: str
    record: dict[str, Any]
    commands: int  # how many SuppressionCommands intake must fan out for it


# The generator targets the shipped destinations file (deploy/destinations.toml).
DEFAULT_DESTINATIONS = load_destinations()


def expected_commands(record: dict[str, Any]) -> int:
    """Commands intake plans for a valid generated record, from the routing table."""
    email, phone = bool(record["email"]), bool(record["phone"])
    present = {
        Identifier.CUSTOMER_ID: bool(record["customer_id"]),
        Identifier.EMAIL: email,
        Identifier.PHONE: phone,
        Identifier.POSTAL_ADDRESS: record["postal_address"] is not None,
        Identifier.EMAIL_SHA256: email,
        Identifier.PHONE_SHA256: phone,
        Identifier.DEVICE_ID: bool(record.get("device_id")),
    }
    destinations = DEFAULT_DESTINATIONS.for_scopes(Scope(s) for s in record["scopes"])
    return sum(1 for d in destinations if any(present[i] for i in d.requires_one_of))


def _address(rng: random.Random, first: str, last: str) -> dict[str, Any]:
    city, region, code, country = rng.choice(_CITIES)
    postal = code + "".join(str(rng.randrange(10)) for _ in range(5 - len(code))) if code.isdigit() else code
    lines = [f"{rng.randrange(1, 2000)} {rng.choice(_STREETS)}"]
    if rng.random() < 0.3:
        lines.append(f"Apt {rng.randrange(1, 60)}")
    return {
        "name": f"{first} {last}",
        "lines": lines,
        "city": city,
        "region": region,
        "postal_code": postal,
        "country": country,
    }


def generate_events(count: int, seed: int = 7, now: datetime | None = None) -> Iterator[GeneratedEvent]:
    """``count`` valid OptOutRequested records with a realistic mix of identifiers, scopes,
    sources and jurisdictions, each keyed by its subject key as publishers key them."""
    rng = random.Random(seed)
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    weights = [w for _, w in _JURISDICTIONS]
    places = [j for j, _ in _JURISDICTIONS]
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        customer_id = f"C{rng.randrange(10**9):09d}" if rng.random() < 0.6 else None
        email = f"{first}.{last}.{i}@{rng.choice(_DOMAINS)}".lower() if rng.random() < 0.75 else None
        phone = (
            f"+1{rng.randrange(201, 990)}{rng.randrange(200, 1000)}{rng.randrange(10000):04d}"
            if rng.random() < 0.3
            else None
        )
        address = _address(rng, first, last) if rng.random() < 0.25 else None
        if not (customer_id or email or phone or address):
            email = f"{first}.{last}.{i}@{rng.choice(_DOMAINS)}".lower()
        specific: list[list[str]] = []
        if email:
            specific.append(["EMAIL_MARKETING"])
        if address:
            specific.append(["POSTAL_MARKETING"])
        if customer_id or email or phone:
            specific.append(["THIRD_PARTY_SHARING"])
        if email:
            specific.append(["EMAIL_MARKETING", "THIRD_PARTY_SHARING"])
        scopes = ["ALL"] if rng.random() < 0.35 or not specific else rng.choice(specific)
        record: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "customer_id": customer_id,
            "email": email,
            "phone": phone,
            "postal_address": address,
            "scopes": scopes,
            "source": rng.choice(_SOURCES),
            "jurisdiction": rng.choices(places, weights)[0],
            "requested_at": moment - timedelta(seconds=rng.randrange(3 * 86400)),
        }
        postal = (
            postal_key(normalize_postal_address(address))
            if address is not None and not (customer_id or email or phone)
            else None
        )
        key = subject_key(customer_id, email, phone, postal)
        yield GeneratedEvent(key, record, expected_commands(record))


def check_sample(sample: Sequence[GeneratedEvent], settings: Settings) -> None:
    """Cross-check the generator against intake's own validation and planning."""
    now = datetime.now(UTC)
    skew = timedelta(seconds=settings.clock_skew_seconds)
    for event in sample:
        request = validate_request(event.record, now, skew, settings.default_phone_region)
        planned = len(plan_commands(request, now, settings.destinations))
        if request.subject_key != event.key or planned != event.commands:
            raise RuntimeError(
                f"generator disagrees with intake for {event.record['event_id']}: key "
                f"{request.subject_key == event.key}, commands {planned} vs {event.commands}"
            )


@dataclass
class PreloadResult:
    events: int
    commands: int  # SuppressionCommands intake must produce for these events
    seconds: float
    failures: list[str] = field(default_factory=list)


def preload(
    settings: Settings, count: int, seed: int = 7, codec: Codec | None = None, check: int = 500
) -> PreloadResult:
    """Produce ``count`` encoded OptOutRequested events to the requests topic and wait for
    every delivery report. Returns the number of commands intake must fan out."""
    codec = codec or default_codec()
    producer = make_producer(
        settings,
        **{
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 512 * 1024,
        },
    )
    result = PreloadResult(0, 0, 0.0)
    delivered = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        elif len(result.failures) < 5:
            result.failures.append(f"{err.name()}: {err.str()}")

    progress = Progress("preload", count)
    topic = settings.requests_topic
    sample: list[GeneratedEvent] = []
    started = time.monotonic()
    for event in generate_events(count, seed):
        if len(sample) < check:
            sample.append(event)
        value = codec.encode("OptOutRequested", event.record)
        while True:
            try:
                producer.produce(topic, value=value, key=event.key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        result.events += 1
        result.commands += event.commands
        progress.update(result.events)
    remaining = producer.flush(120)
    result.seconds = time.monotonic() - started
    if remaining or delivered != count or result.failures:
        raise RuntimeError(
            f"preload: {delivered}/{count} delivered, {remaining} pending, failures {result.failures}"
        )
    check_sample(sample, settings)
    return result
