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

from confluent_kafka import Consumer, Message, TopicPartition

from services.common.avro import default_codec
from services.common.kafka import create_topics, header_pairs, make_admin
from services.common.settings import Settings

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
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_settings(base: dict[str, Any], **overrides: Any) -> Settings:
    """Settings with a fresh topic prefix, and the topics created (3 partitions each)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    values = {**base, "topic_prefix": prefix, "topic_partitions": 3, "batch_timeout_ms": 50, **overrides}
    cfg = Settings(**values)
    create_topics(cfg, cfg.all_topics())
    return cfg


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
    cfg: Settings, topic: str, expect: int | None = None, timeout: float = 60.0, settle: float = 1.5
) -> list[Record]:
    """Read ``topic`` from the beginning until ``expect`` messages arrived (or, with no
    expectation, until nothing new came for ``settle`` seconds). Assigns partitions
    directly: no consumer group, nothing committed."""
    admin = make_admin(cfg)
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
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
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.2)
            got = [_to_record(m) for m in batch if m.error() is None]
            if got:
                out.extend(got)
                last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                # Keep reading briefly to catch unexpected extras.
                if time.monotonic() - last_new > settle:
                    break
            elif expect is None and time.monotonic() - last_new > settle:
                break
    finally:
        consumer.close()
    return out


def wait_until(
    predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.25, message: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
