"""Kafka client factories and helpers shared by every service.

confluent-kafka practice: poll -> check ``msg.error()`` -> process -> commit ->
``close()`` in ``finally``; ``producer.poll(0)`` in loops; delivery reports checked
before offsets are committed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.cimpl import NewTopic
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from services.common.contract import Identifier
from services.common.errors import ConfigurationError, RetriableError
from services.common.logging import get_logger
from services.common.renewable_producer import RenewableProducer
from services.common.settings import Settings

log = get_logger(__name__)

Headers = list[tuple[str, str | bytes | None]]


# librdkafka's own log lines ("%3|...|FAIL|... Connection refused", every 50 ms while a
# broker is down) would flood stderr. Client errors reach ``_error_cb`` instead, logged
# structured and at most once per error code every 30 s; native lines go to this stdlib
# logger, silent unless someone lowers its level to debug a client.
NATIVE_LOG = logging.getLogger("librdkafka")
NATIVE_LOG.setLevel(logging.CRITICAL)
_ERROR_LOG_INTERVAL_SECONDS = 30.0
_last_error_logged: dict[str, float] = {}


def native_debug(config: dict[str, Any]) -> dict[str, Any]:
    """``config``, and when it asks for librdkafka's debug contexts (OPTOUT_KAFKA_EXTRA, e.g.
    ``{"debug": "cgrp,topic,fetch"}``) the native log lines reach stderr (the service's log),
    each with its UTC time: otherwise ``NATIVE_LOG`` would swallow them."""
    if config.get("debug") and not NATIVE_LOG.handlers:
        handler = logging.StreamHandler()
        formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ librdkafka %(message)s", "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
        NATIVE_LOG.addHandler(handler)
        NATIVE_LOG.propagate = False
        NATIVE_LOG.setLevel(logging.DEBUG)
    return config


def _error_cb(err: KafkaError) -> None:
    # librdkafka reports broker-down etc. here; it reconnects by itself.
    now = time.monotonic()
    code = err.name()
    if now - _last_error_logged.get(code, -_ERROR_LOG_INTERVAL_SECONDS) >= _ERROR_LOG_INTERVAL_SECONDS:
        _last_error_logged[code] = now
        log.warning("kafka client error", code=code, reason=err.str())


PRODUCE_REQUEST_TIMEOUT_MS = 10_000


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        # A ProduceRequest times out after the lesser of socket.timeout.ms and the batch's
        # remaining message.timeout.ms. At librdkafka's 60 s default, a request to a leader that
        # hangs (a broker frozen, not dead) outlives message.timeout.ms: the messages fail
        # though the cluster may have them, and the batch's retry writes them again. At 10 s
        # the request is given up and retried at the new leader (same sequence numbers: the
        # idempotent producer's copies are dropped), well within message.timeout.ms.
        # OPTOUT_KAFKA_EXTRA may set another value.
        "socket.timeout.ms": PRODUCE_REQUEST_TIMEOUT_MS,
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 30_000,
        "error_cb": _error_cb,
        "logger": NATIVE_LOG,
    }
    config.update(overrides)
    return with_request_log(settings, native_debug(config))


# What one fetch brings per partition (librdkafka's max.partition.fetch.bytes, 1 MiB by
# default). The consumer's queue limits (OPTOUT_KAFKA_CONSUMER_QUEUE_MESSAGES and _KBYTES) are
# checked before a fetch, so a fetch may overshoot them by this much per partition: 1 MiB of
# 100-byte acks is 10,000 messages per partition, about 7 MiB of librdkafka's memory each
# (with 10,000 as the limit, six partitions' queue reached 44,000 acks at 1 MiB and 10,600 at
# 256 KiB). A record batch larger than this is still returned whole (KIP-74), so no message
# is ever too big to fetch. OPTOUT_KAFKA_EXTRA may set another value.
CONSUMER_PARTITION_FETCH_BYTES = 262_144


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "max.partition.fetch.bytes": CONSUMER_PARTITION_FETCH_BYTES,
        **settings.kafka_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.wait.max.ms": settings.kafka_fetch_wait_ms,
        "fetch.min.bytes": settings.kafka_fetch_min_bytes,
        "queued.max.messages.kbytes": settings.kafka_consumer_queue_kbytes,
        "queued.min.messages": settings.kafka_consumer_queue_messages,
        "error_cb": _error_cb,
        "logger": NATIVE_LOG,
    }
    config.update(overrides)
    return with_request_log(settings, native_debug(config))


# --- requests sent, from librdkafka's statistics (OPTOUT_KAFKA_REQUEST_LOG_SECONDS) ----------
COUNTED_BROKER_FIELDS = ("tx", "txbytes", "rx", "rxbytes")


def request_counts(raw: str | bytes) -> tuple[str, dict[str, int]]:
    """Pure: a librdkafka statistics document -> (client name, running totals over every
    broker connection: requests sent by type, ``brokers.*.req``, and tx/txbytes/rx/rxbytes)."""
    stats = json.loads(raw)
    if not isinstance(stats, dict):
        raise ValueError("librdkafka statistics are not a JSON object")
    counts: dict[str, int] = {}
    brokers = stats.get("brokers")
    for broker in brokers.values() if isinstance(brokers, dict) else ():
        if not isinstance(broker, dict):
            continue
        requests = broker.get("req")
        items = [*(requests.items() if isinstance(requests, dict) else ())]
        items += [(name, broker.get(name)) for name in COUNTED_BROKER_FIELDS]
        for name, value in items:
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                counts[name] = counts.get(name, 0) + value
    return str(stats.get("name", "")), counts


class RequestLog:
    """A ``stats_cb`` logging the client's running request counts (``request_counts``) at most
    every ``seconds``, after passing the statistics to ``inner`` (the lag tracker's)."""

    def __init__(self, seconds: float, inner: Callable[[str], None] | None = None) -> None:
        self.seconds = seconds
        self.inner = inner
        self._last = -seconds

    def __call__(self, raw: str) -> None:
        if self.inner is not None:
            self.inner(raw)
        now = time.monotonic()
        if now - self._last < self.seconds:
            return
        self._last = now
        try:
            client, counts = request_counts(raw)
        except ValueError as exc:
            log.warning("unreadable librdkafka statistics", error=str(exc))
            return
        log.info("kafka requests", client=client, **counts)


def with_request_log(settings: Settings, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with a ``RequestLog`` when OPTOUT_KAFKA_REQUEST_LOG_SECONDS is set (chained
    after a ``stats_cb`` already there; statistics at least that often)."""
    seconds = settings.kafka_request_log_seconds
    if not seconds:
        return config
    interval = max(1, int(seconds * 1000))
    config["stats_cb"] = RequestLog(seconds, config.get("stats_cb"))
    config["statistics.interval.ms"] = min(int(config.get("statistics.interval.ms") or interval), interval)
    return config


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, **overrides))


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, **overrides))


def make_admin(settings: Settings) -> AdminClient:
    config: dict[str, Any] = {**settings.kafka_config(), "logger": NATIVE_LOG}
    return AdminClient(native_debug(config))


def check_broker(settings: Settings, timeout: float = 10.0) -> None:
    """Raise ``ConfigurationError`` with one clear line when the broker does not answer."""
    admin = make_admin(settings)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ConfigurationError(
            f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f}s "
            f"({exc.args[0].str() if exc.args else exc}); check OPTOUT_KAFKA_BOOTSTRAP and "
            "the security settings, or run 'make up'"
        ) from None


# Identifiers that are raw contact details: topics whose messages carry one get a bounded
# retention (hashes and customer ids are not raw contact details).
RAW_CONTACT_IDENTIFIERS = frozenset({Identifier.EMAIL, Identifier.PHONE, Identifier.POSTAL_ADDRESS})
RETENTION_MS = "retention.ms"
SEGMENT_MS = "segment.ms"
# Kafka deletes whole segments: rolling a PII topic's segment at least daily keeps a message
# from outliving its retention by more than a day (the broker default rolls every 7 days).
MAX_PII_SEGMENT_MS = 86_400_000


def pii_topics(settings: Settings) -> list[str]:
    """Topics that carry raw contact details: requests, confirmations, the command topics of
    destinations that receive a raw email, phone or postal address, and every DLQ (a dead
    letter keeps the original bytes)."""
    raw_commands = [d.id for d in settings.destinations if d.identifiers & RAW_CONTACT_IDENTIFIERS]
    chosen = {
        settings.requests_topic,
        settings.confirmations_topic,
        settings.requests_dlq_topic,
        settings.acks_dlq_topic,
        *(settings.suppress_topic(d) for d in raw_commands),
        *(settings.suppress_dlq_topic(d.id) for d in settings.destinations),
    }
    return [t for t in settings.all_topics() if t in chosen]


def pii_retention_ms(settings: Settings) -> int:
    return settings.pii_topic_retention_hours * 3_600_000


# The suppression-state topic (``Settings.suppressions_topic``) keeps the newest value per
# key for ever: log compaction, and a tombstone (null value) removes a key after
# ``delete.retention.ms`` (a day, the broker default), long enough for followers to see it.
COMPACTED_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}
MIN_INSYNC_REPLICAS = "min.insync.replicas"


def topic_config(settings: Settings, topic: str, pii: set[str]) -> dict[str, str]:
    """What a topic is created with: PII topics a bounded retention, the suppression-state
    topic log compaction, others the broker's defaults; every one min.insync.replicas when
    configured."""
    if topic == settings.suppressions_topic:
        config = dict(COMPACTED_TOPIC_CONFIG)
    else:
        config = pii_topic_config(settings) if topic in pii else {}
    if settings.topic_min_insync_replicas is not None:
        config[MIN_INSYNC_REPLICAS] = str(settings.topic_min_insync_replicas)
    return config


def pii_topic_config(settings: Settings) -> dict[str, str]:
    """Topic settings of a PII topic: ``retention.ms`` and a ``segment.ms`` of at most a day."""
    retention = pii_retention_ms(settings)
    return {RETENTION_MS: str(retention), SEGMENT_MS: str(min(retention, MAX_PII_SEGMENT_MS))}


def create_topics(
    settings: Settings, topics: Iterable[str], partitions: int | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created, with
    OPTOUT_TOPIC_REPLICATION_FACTOR copies and (when set) OPTOUT_TOPIC_MIN_INSYNC_REPLICAS.
    Topics that carry raw contact details (``pii_topics``) are created with ``retention.ms``
    from OPTOUT_PII_TOPIC_RETENTION_HOURS and ``segment.ms`` of at most a day; the
    suppression-state topic with log compaction (``topic_config``)."""
    admin = make_admin(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return []
    pii = set(pii_topics(settings))
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                config=topic_config(settings, t, pii),
            )
            for t in wanted
        ],
        operation_timeout=timeout,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_until_served(admin, wanted, timeout)
    return created


class _NotServedYet(RetriableError):
    pass


def _until_served(check: Callable[[], None], timeout: float) -> None:
    """Run ``check`` until it stops raising ``_NotServedYet`` (backing off), at most
    ``timeout`` seconds; then its last ``_NotServedYet`` (a ``RetriableError``) is raised.

    KRaft answers CreateTopics and IncrementalAlterConfigs when the controller has committed
    the change; the broker's metadata cache applies it a moment later, so a list, describe or
    produce right after could still see the old state (both seen on CI)."""
    retry(
        retry=retry_if_exception_type(_NotServedYet),
        wait=wait_exponential(multiplier=0.02, max=0.5),
        stop=stop_after_delay(timeout),
        reraise=True,
    )(check)()


def _wait_until_served(admin: AdminClient, topics: Sequence[str], timeout: float) -> None:
    """Return once the broker's metadata lists every topic with a leader for each partition."""

    def check() -> None:
        listed = admin.list_topics(timeout=timeout).topics
        pending = [
            t
            for t in topics
            if t not in listed
            or listed[t].error is not None
            or any(p.leader < 0 for p in listed[t].partitions.values())
        ]
        if pending:
            raise _NotServedYet(f"topics created but not yet served by the broker: {pending}")

    _until_served(check, timeout)


def _wait_until_configs_served(admin: AdminClient, wanted: dict[str, dict[str, str]], timeout: float) -> None:
    """Return once the broker describes every topic of ``wanted`` with the values given."""

    def check() -> None:
        described = admin.describe_configs(
            [ConfigResource("TOPIC", t) for t in wanted], request_timeout=timeout
        )
        pending = []
        for resource, future in described.items():
            entries = future.result(timeout)
            values = {
                name: entries[name].value if name in entries else None for name in wanted[resource.name]
            }
            if values != wanted[resource.name]:
                pending.append(resource.name)
        if pending:
            raise _NotServedYet(f"topic settings changed but not yet served by the broker: {sorted(pending)}")

    _until_served(check, timeout)


@dataclass(frozen=True)
class RetentionChange:
    topic: str
    old_ms: int | None  # retention.ms before; None when the broker did not report it
    new_ms: int


def apply_pii_retention(settings: Settings, timeout: float = 30.0) -> list[RetentionChange]:
    """Set ``retention.ms`` (and ``segment.ms``, see ``pii_topic_config``) of every existing
    PII topic (``pii_topics``) where they differ from OPTOUT_PII_TOPIC_RETENTION_HOURS
    (incremental alter: other settings are kept); return the topics changed."""
    admin = make_admin(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    topics = [t for t in pii_topics(settings) if t in existing]
    if not topics:
        return []
    wanted = pii_topic_config(settings)
    described = admin.describe_configs([ConfigResource("TOPIC", t) for t in topics], request_timeout=timeout)
    changes: dict[str, tuple[RetentionChange, list[ConfigEntry]]] = {}
    for resource, future in described.items():
        current = {name: entry.value for name, entry in future.result(timeout).items() if name in wanted}
        differing = [name for name, value in wanted.items() if current.get(name) != value]
        if differing:
            old = current.get(RETENTION_MS)
            change = RetentionChange(resource.name, int(old) if old else None, int(wanted[RETENTION_MS]))
            entries = [
                ConfigEntry(name, wanted[name], incremental_operation=AlterConfigOpType.SET)
                for name in differing
            ]
            changes[resource.name] = (change, entries)
    if not changes:
        return []
    altered = admin.incremental_alter_configs(
        [
            ConfigResource("TOPIC", topic, incremental_configs=entries)
            for topic, (_, entries) in changes.items()
        ],
        request_timeout=timeout,
    )
    for future in altered.values():
        future.result(timeout)
    _wait_until_configs_served(
        admin,
        {topic: {e.name: str(e.value) for e in entries} for topic, (_, entries) in changes.items()},
        timeout,
    )
    return [changes[t][0] for t in topics if t in changes]


def apply_min_insync_replicas(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Set ``min.insync.replicas`` of every existing topic of the pipeline to
    OPTOUT_TOPIC_MIN_INSYNC_REPLICAS where it differs (nothing when that is unset); return
    the topics changed."""
    wanted = settings.topic_min_insync_replicas
    if wanted is None:
        return []
    admin = make_admin(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    topics = [t for t in settings.all_topics() if t in existing]
    if not topics:
        return []
    described = admin.describe_configs([ConfigResource("TOPIC", t) for t in topics], request_timeout=timeout)
    differing = []
    for resource, future in described.items():
        entry = future.result(timeout).get(MIN_INSYNC_REPLICAS)
        if entry is None or entry.value != str(wanted):
            differing.append(resource.name)
    if not differing:
        return []
    entry = ConfigEntry(MIN_INSYNC_REPLICAS, str(wanted), incremental_operation=AlterConfigOpType.SET)
    altered = admin.incremental_alter_configs(
        [ConfigResource("TOPIC", t, incremental_configs=[entry]) for t in differing], request_timeout=timeout
    )
    for future in altered.values():
        future.result(timeout)
    _wait_until_configs_served(admin, {t: {MIN_INSYNC_REPLICAS: str(wanted)} for t in differing}, timeout)
    return [t for t in topics if t in differing]


def under_replicated_topics(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """Topics of the pipeline with fewer replicas than OPTOUT_TOPIC_REPLICATION_FACTOR, with
    the replicas they have (a topic's replication factor changes only by reassignment)."""
    listed = make_admin(settings).list_topics(timeout=timeout).topics
    short: dict[str, int] = {}
    for name in settings.all_topics():
        topic = listed.get(name)
        if topic is None or not topic.partitions:
            continue
        replicas = min(len(p.replicas) for p in topic.partitions.values())
        if replicas < settings.topic_replication_factor:
            short[name] = replicas
    return short


@dataclass(frozen=True)
class Outgoing:
    """One message to produce."""

    topic: str
    value: bytes
    key: bytes | str | None = None
    headers: Headers | None = None


# Size refusals: librdkafka's own check at produce() (over the producer's
# message.max.bytes) and the broker's, in the delivery report.
SIZE_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


@dataclass
class DeliveryTracker:
    """Counts delivery reports of one batch; ``wait()`` flushes and raises on any failure.

    A message produced with a ``fallback`` that is refused for its size (at ``produce``
    or in its delivery report) is replaced by the fallback, so a refusal that would
    repeat on every retry never blocks the batch (see ``dead_letter``)."""

    producer: Producer | RenewableProducer
    pending: int = 0
    failures: list[str] = field(default_factory=list)
    _replacements: list[Outgoing] = field(default_factory=list)
    delivered: int = 0
    timed_out: int = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        self.pending -= 1
        if err is None:
            self.delivered += 1
            return
        if err.code() == KafkaError._MSG_TIMED_OUT:
            self.timed_out += 1
        self.failures.append(f"{err.name()}: {err.str()}")

    def _delivery_with_fallback(self, fallback: Outgoing) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None and err.code() in SIZE_ERRORS:
                self.pending -= 1
                log.warning("message refused for its size; sending its fallback", topic=fallback.topic)
                self._replacements.append(fallback)
                return
            self._on_delivery(err, msg)

        return on_delivery

    def produce(
        self,
        topic: str,
        value: bytes | None,  # None: a tombstone (compacted topics)
        key: bytes | str | None = None,
        headers: Headers | None = None,
        fallback: Outgoing | None = None,
    ) -> None:
        on_delivery = self._on_delivery if fallback is None else self._delivery_with_fallback(fallback)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room (backpressure).
                self.producer.poll(0.1)
            except KafkaException as exc:
                if fallback is None or not exc.args or exc.args[0].code() not in SIZE_ERRORS:
                    raise
                log.warning("message refused for its size; sending its fallback", topic=fallback.topic)
                self.produce(fallback.topic, fallback.value, fallback.key, fallback.headers)
                return
        self.pending += 1
        if self.pending % 500 == 0:  # serve delivery reports now and then, not per message
            self.producer.poll(0)

    def wait(self, timeout: float = 30.0) -> None:
        remaining = self.producer.flush(timeout)
        while self._replacements and not remaining:
            replacements, self._replacements = self._replacements, []
            for outgoing in replacements:
                self.produce(outgoing.topic, outgoing.value, outgoing.key, outgoing.headers)
            remaining = self.producer.flush(timeout)
        if isinstance(self.producer, RenewableProducer):
            # Still queued after the wait counts as timed out: nothing came back for it.
            self.producer.batch_outcome(self.delivered, self.timed_out + max(self.pending, 0))
        if remaining or self.pending > 0:
            raise RetriableError(f"{self.pending} messages not delivered within {timeout:.0f}s")
        if self.failures:
            first = self.failures[0]
            count = len(self.failures)
            self.failures = []
            raise RetriableError(f"{count} messages failed delivery (first: {first})")


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Offsets to commit after ``messages``: highest offset + 1 per partition."""
    highest: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic() or "", m.partition() or 0)
        offset = m.offset() or 0
        if offset >= highest.get(tp, -1):
            highest[tp] = offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]


def header_pairs(message: Message) -> Headers:
    """A message's headers as (name, value) pairs (librdkafka gives a list; be lenient)."""
    raw = message.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(name), value) for name, value in items]


# --- dead letters: one path for intake, connectors and the confirmer -------------------------
# A dead letter must always be deliverable, or the batch that carries it is retried forever.
# Brokers refuse records over message.max.bytes (default ~1 MiB) and librdkafka refuses
# them at produce() (its own message.max.bytes, default 1,000,000). So a dead letter is cut
# to MAX_DEAD_LETTER_BYTES in total (key, value and every header, counted with their record
# overhead), saying what was cut; should it still be refused (a topic with a lower
# max.message.bytes), a minimal record with only the reason and origin replaces it.
MAX_DEAD_LETTER_BYTES = 900 * 1024
MAX_DLQ_DETAIL_BYTES = 1000
MAX_DLQ_KEY_BYTES = 1024
MAX_ORIGINAL_HEADER_BYTES = 64 * 1024  # original headers kept (whole, in order) up to this
_HEADER_OVERHEAD = 10  # varint lengths etc. per header in a Kafka record
_RECORD_OVERHEAD = 128


def _header_size(name: str, value: str | bytes | None) -> int:
    raw = value.encode() if isinstance(value, str) else (value or b"")
    return len(name.encode()) + len(raw) + _HEADER_OVERHEAD


def _origin_headers(message: Message, reason: str, service: str) -> Headers:
    return [
        ("optout.dlq.reason", reason.encode("utf-8", "replace")[:200]),
        ("optout.dlq.service", service.encode()),
        ("optout.dlq.topic", (message.topic() or "").encode()),
        ("optout.dlq.partition", str(message.partition()).encode()),
        ("optout.dlq.offset", str(message.offset()).encode()),
    ]


def dlq_headers(message: Message, reason: str, detail: str, service: str) -> Headers:
    """Headers of a dead-lettered message: why, and where it came from (original headers
    are added by ``dead_letter_record``, within its size limit)."""
    origin = _origin_headers(message, reason, service)
    return [
        origin[0],
        ("optout.dlq.detail", detail.encode("utf-8", "replace")[:MAX_DLQ_DETAIL_BYTES]),
        *origin[1:],
    ]


def dead_letter_record(
    topic: str, message: Message, reason: str, detail: str, service: str, limit: int = MAX_DEAD_LETTER_BYTES
) -> Outgoing:
    """``message`` as a dead letter on ``topic``: its key, bytes and headers plus ours,
    at most ``limit`` bytes in all. What does not fit is cut and named: the key beyond
    1 KiB (``optout.dlq.key_truncated_from_bytes``), original headers beyond 64 KiB or
    the room left (``optout.dlq.headers_dropped``: their names), the value beyond the room
    left (``optout.dlq.truncated_from_bytes``)."""
    ours = dlq_headers(message, reason, detail, service)
    notes: Headers = []
    key = message.key()
    if key is not None and len(key) > MAX_DLQ_KEY_BYTES:
        notes.append(("optout.dlq.key_truncated_from_bytes", str(len(key)).encode()))
        key = key[:MAX_DLQ_KEY_BYTES]
    kept: Headers = []
    dropped: list[str] = []
    budget = MAX_ORIGINAL_HEADER_BYTES
    for name, value in header_pairs(message):
        size = _header_size(name, value)
        if size <= budget:
            kept.append((name, value))
            budget -= size
        else:
            dropped.append(name)
    if dropped:
        names = ",".join(dropped).encode("utf-8", "replace")[:MAX_DLQ_DETAIL_BYTES]
        notes.append(("optout.dlq.headers_dropped", names))
    value = message.value() or b""
    notes_room = _header_size("optout.dlq.truncated_from_bytes", str(len(value)))
    used = (
        _RECORD_OVERHEAD
        + len(key or b"")
        + sum(_header_size(n, v) for n, v in [*kept, *ours, *notes])
        + notes_room
    )
    room = max(0, limit - used)
    if len(value) > room:
        notes.append(("optout.dlq.truncated_from_bytes", str(len(value)).encode()))
        value = value[:room]
    return Outgoing(topic, value, key, [*kept, *ours, *notes])


def minimal_dead_letter(topic: str, message: Message, reason: str, service: str) -> Outgoing:
    """The last resort when even the cut dead letter is refused: no value, no original
    headers, only the reason and where the message came from."""
    key = message.key()
    headers = [*_origin_headers(message, reason, service), ("optout.dlq.minimal", b"1")]
    return Outgoing(topic, b"", key if key is None or len(key) <= MAX_DLQ_KEY_BYTES else None, headers)


def dead_letter(
    tracker: DeliveryTracker, topic: str, message: Message, reason: str, detail: str, service: str
) -> None:
    """Copy ``message`` to the DLQ ``topic`` with its reason (the one dead-letter path of
    every service); see ``dead_letter_record`` for the size limit. Never blocks the batch:
    a size refusal sends ``minimal_dead_letter`` instead."""
    record = dead_letter_record(topic, message, reason, detail, service)
    tracker.produce(
        record.topic,
        record.value,
        key=record.key,
        headers=record.headers,
        fallback=minimal_dead_letter(topic, message, reason, service),
    )
