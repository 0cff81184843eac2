"""Helpers for integration tests: isolated settings, running services in threads,
reading topics back. Everything talks to the real broker and database."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Message, TopicPartition
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from services.common.avro import default_codec
from services.common.kafka import create_topics, header_pairs, make_admin
from services.common.settings import Settings
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import StandinServer

ServiceMain = Callable[[Settings, threading.Event], None]

# A realistic postal address for tests (the same one everywhere, so failures compare easily).
ADDRESS: dict[str, Any] = {
    "name": "Ada Lovelace",
    "lines": ["12 St James's Sq"],
    "city": "London",
    "region": None,
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, and that the kernel will hand to no
    other ``bind`` to port 0 or outgoing connection for a minute (TIME_WAIT's length), while
    a server setting ``SO_REUSEADDR`` binds it at once (ours do: ``http.server``, uvicorn,
    ``services.common.http_server``, PgBouncer, Kafka, moto's werkzeug).

    The port is first bound to a listening socket, connected to, and the accepted side
    closed first: that side's TIME_WAIT keeps the port taken. Merely binding port 0 and
    closing (as before) freed the port at once, and the caller starts its server seconds
    later (after creating topics): meanwhile another test's ``free_port`` (other pytest-xdist
    workers, other sessions on the machine) could get the same port from the kernel, and
    the server's bind failed with "Address already in use"."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            accepted.close()  # the active close: TIME_WAIT on (127.0.0.1, port)
    return port


def standin_ports() -> dict[str, int]:
    """A free port for every stand-in ``optout run standins`` starts (settings field name ->
    port): tests that run it must not collide on the fixed defaults (18081, 18090, ...)."""
    return {
        name: free_port()
        for name in Settings.model_fields
        if name.startswith("standin_") and name.endswith("_port")
    }


def standin_ports_env() -> dict[str, str]:
    """``standin_ports`` as OPTOUT_* environment variables, for service processes."""
    return {f"OPTOUT_{name.upper()}": str(port) for name, port in standin_ports().items()}


# Settings made by isolated_settings during the current test: their topics are deleted when
# the test ends (tests/conftest.py), so repeated runs against one broker do not pile up
# thousands of partitions (a broker holds files open for each).
_ISOLATED: list[Settings] = []


def isolated_settings(base: dict[str, Any], **overrides: Any) -> Settings:
    """Settings with a fresh topic prefix, and the topics created (3 partitions each); the
    topics are deleted after the test."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    values = {**base, "topic_prefix": prefix, "topic_partitions": 3, "batch_timeout_ms": 50, **overrides}
    cfg = Settings(**values)
    _ISOLATED.append(cfg)
    create_topics(cfg, cfg.all_topics())
    return cfg


def delete_isolated_topics(timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with a prefix isolated_settings handed out since
    the last call; return the topics deleted."""
    made, _ISOLATED[:] = list(_ISOLATED), []
    deleted: list[str] = []
    for cfg in made:
        admin = make_admin(cfg)
        topics = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(cfg.topic_prefix)]
        if not topics:
            continue
        for future in admin.delete_topics(topics, operation_timeout=timeout).values():
            future.result(timeout)
        deleted.extend(topics)
    return deleted


@contextmanager
def running(main: ServiceMain, cfg: Settings, name: str = "service") -> Iterator[threading.Event]:
    """Run a service's ``run(settings, stop)`` in a thread; stop it (SIGTERM path) on exit."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            main(cfg, stop)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), f"{name} did not stop within 60 s"
    if errors:
        raise errors[0]


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int

    def decoded(self) -> dict[str, Any]:
        return default_codec().decode(self.value)[1]


def _to_record(m: Message) -> Record:
    headers = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else "") for k, v in header_pairs(m)}
    return Record(m.key(), m.value(), headers, m.partition() or 0, m.offset() or 0)


def read_topic(
    cfg: Settings, topic: str, expect: int | None = None, timeout: float = 60.0, settle: float = 0.5
) -> list[Record]:
    """Read ``topic`` from the beginning until ``expect`` messages arrived (or, with no
    expectation, right away), then on to the end offsets the broker reports at that moment
    (everything already written, extras included), then until nothing new came for
    ``settle`` seconds (extras still on their way). Assigns partitions directly: no
    consumer group, nothing committed."""
    admin = make_admin(cfg)
    partitions = sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer = Consumer(
        {
            **cfg.kafka_config(),
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[Record] = []
    next_offset: dict[int, int] = {}
    ends: dict[int, tuple[int, int]] | None = None  # partition -> (low, high) watermarks
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.1)
            got = [_to_record(m) for m in batch if m.error() is None]
            if got:
                out.extend(got)
                for r in got:
                    next_offset[r.partition] = max(next_offset.get(r.partition, 0), r.offset + 1)
                last_new = time.monotonic()
            if expect is not None and len(out) < expect:
                continue
            if ends is None:
                ends = {p: _watermarks(consumer, topic, p) for p in partitions}
            caught_up = all(high <= max(low, next_offset.get(p, low)) for p, (low, high) in ends.items())
            if caught_up and time.monotonic() - last_new > settle:
                break
    finally:
        consumer.close()
    return out


@retry(
    retry=retry_if_exception_type(KafkaException),
    stop=stop_after_delay(30),
    wait=wait_fixed(0.5),
    reraise=True,
)
def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """(low, high) watermarks of a partition; retried while its leader moves (a broker of a
    cluster was killed: the query may meet the old leader's handle being torn down)."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    return int(low), int(high)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.25, message: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")


class _TopicNotReady(Exception):
    """The broker's metadata does not list the topic's partitions yet."""


# A topic created a moment ago may have no partitions in the metadata or no leader yet.
@retry(
    retry=retry_if_exception_type((KafkaException, _TopicNotReady)),
    stop=stop_after_delay(15),
    wait=wait_fixed(0.2),
    reraise=True,
)
def uncommitted(cfg: Settings, group: str, topics: tuple[str, ...]) -> int:
    """Messages of ``topics`` that consumer group ``group`` has not committed yet (the sum over
    partitions of end offset minus committed offset; a partition with messages and no commit
    counts whole). Zero means the group processed and committed everything there is."""
    admin = make_admin(cfg)
    partitions: list[TopicPartition] = []
    for topic in topics:
        listed = sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
        if not listed:
            raise _TopicNotReady(topic)
        partitions.extend(TopicPartition(topic, p) for p in listed)
    request = ConsumerGroupTopicPartitions(group, partitions)
    result = admin.list_consumer_group_offsets([request], request_timeout=10)[group].result()
    committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or []}
    watermarks = Consumer({**cfg.kafka_config(), "group.id": f"watermarks-{uuid.uuid4().hex}"})
    try:
        missing = 0
        for tp in partitions:
            low, high = watermarks.get_watermark_offsets(tp, timeout=10)
            done = committed.get((tp.topic, tp.partition), -1)
            missing += max(0, high - max(done, low))
        return missing
    finally:
        watermarks.close()


@retry(
    retry=retry_if_exception_type((KafkaException, _TopicNotReady)),
    stop=stop_after_delay(30),
    wait=wait_fixed(0.2),
    reraise=True,
)
def messages_on(cfg: Settings, topic: str) -> int:
    """Messages written to ``topic`` so far (the sum of its partitions' end offsets), at once:
    a producer's ack means they are counted. Retried while a fresh topic's partitions are
    not listed or still elect their leader (NOT_LEADER_FOR_PARTITION on a busy machine)."""
    consumer = Consumer({**cfg.kafka_config(), "group.id": f"watermarks-{uuid.uuid4().hex}"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        if not partitions:
            raise _TopicNotReady(topic)
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        )
    finally:
        consumer.close()


def wait_committed(cfg: Settings, groups: dict[str, tuple[str, ...]], timeout: float = 60.0) -> None:
    """Wait until every group (name -> topics) committed every message of its topics: its
    services have then processed (and logged) all of them."""
    left: dict[str, int] = {}

    def done() -> bool:
        left.clear()
        left.update({g: n for g, topics in groups.items() if (n := uncommitted(cfg, g, topics))})
        return not left

    try:
        wait_until(done, timeout=timeout, message="consumer groups to commit everything")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; uncommitted messages per group: {left}") from None


@contextmanager
def sms_standin() -> Iterator[SmsOptOutStandin]:
    """The AWS End User Messaging SMS stand-in on a free port, accepting the development key,
    with OPTOUT_STANDIN_SMS_PORT set meanwhile: the shipped destinations file's ``sms_sender``
    (``endpoint_url = http://127.0.0.1:${OPTOUT_STANDIN_SMS_PORT:-18096}``), loaded in that
    time, talks to it."""
    defaults = Settings.model_construct()
    standin = SmsOptOutStandin({defaults.standin_sms_access_key_id: defaults.standin_sms_secret_access_key})
    with StandinServer(standin.handle, name="sms") as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPTOUT_STANDIN_SMS_PORT", str(server.port))
        yield standin


ESP_TOKEN = "test-esp-token"


@contextmanager
def email_provider_pipeline(base: dict[str, Any]) -> Iterator[tuple[Settings, EmailProviderStandin]]:
    """Intake, the email_provider connector (against its stand-in over HTTP) and the
    confirmer as consume loops in this process, on fresh topics."""
    # Imported here: services import tests.support nowhere, and this module stays light.
    from services.confirmer.service import run as run_confirmer
    from services.connectors.registry import connector_runner
    from services.intake.service import run as run_intake

    standin = EmailProviderStandin(token=ESP_TOKEN)
    with StandinServer(standin.handle, name="email_provider") as server:
        cfg = isolated_settings(
            base,
            email_provider_url=server.url,
            email_provider_token=ESP_TOKEN,
            connector_retry_initial_seconds=0.05,
        )
        with (
            running(run_intake, cfg, "intake"),
            running(connector_runner("email_provider", cfg), cfg, "email_provider"),
            running(run_confirmer, cfg, "confirmer"),
        ):
            yield cfg, standin
