"""A small in-process fake of the confluent-kafka ``Consumer`` and ``Producer``, for unit
tests of the consume loop's rules and of the steps' ``submit`` (no broker, no threads).

It models what the loop relies on, as librdkafka does it:

* rebalance callbacks run only inside ``consume``/``poll``; inside ``on_assign`` the
  assignment does not include the new partitions yet (incremental, cooperative);
* a partition's pause flag survives its revocation and re-assignment;
* a paused partition delivers nothing; ``seek`` moves the fetch position;
* ``commit`` stores offsets; a fatal error or PARTITION_EOF arrive as messages whose
  ``error()`` is set.

Time is a ``FakeClock``: a ``consume``/``poll`` that finds nothing advances it by its
timeout, so a two-minute wait costs no real time. ``FakeProducer`` delivers produced
messages into the same ``FakeBroker`` when the producer is polled or flushed, and can
refuse messages larger than a size limit the way librdkafka does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

Key = tuple[str, int]
Headers = list[tuple[str, bytes | None]]


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass
class FakeBroker:
    """Topics as lists of messages per partition, and the committed offsets per group."""

    partitions: int = 3
    log: dict[Key, list[Message]] = field(default_factory=dict)
    committed: dict[tuple[str, Key], int] = field(default_factory=dict)
    message_max_bytes: int = 1_000_000

    def append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Message:
        if partition is None:
            partition = (sum(key) if key else 0) % self.partitions
        messages = self.log.setdefault((topic, partition), [])
        message = Message(
            topic=topic,
            partition=partition,
            offset=len(messages),
            key=key,
            value=value,
            headers=headers,
            error=None,
            timestamp=(1, 0),
        )
        messages.append(message)
        return message

    def messages(self, topic: str) -> list[Message]:
        return [m for (t, _), ms in sorted(self.log.items()) if t == topic for m in ms]


Callback = Callable[[Any, list[TopicPartition]], None]


class FakeConsumer:
    """Subscribes to topics and is assigned every partition of them on the first call of
    ``consume``/``poll``; tests script further rebalances with ``revoke``/``assign``."""

    def __init__(
        self,
        broker: FakeBroker,
        group: str,
        clock: FakeClock | None = None,
        initial: list[Key] | None = None,
        on_drained: Callable[[], None] | None = None,
        drained_after: int = 3,
    ) -> None:
        self.broker = broker
        self.initial = initial
        self.on_drained = on_drained  # called after ``drained_after`` empty consumes in a row
        self.drained_after = drained_after
        self._empty_streak = 0
        self.group = group
        self.clock = clock or FakeClock()
        self.topics: list[str] = []
        self.callbacks: dict[str, Callback | None] = {}
        self._assigned: list[Key] = []
        self.paused: set[Key] = set()
        self.position: dict[Key, int] = {}
        self._events: list[tuple[str, list[Key]]] = []
        self._errors: list[KafkaError] = []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.polls = 0
        self.consumes = 0
        self.consume_calls: list[tuple[int, float]] = []  # (num_messages, timeout) of each consume
        self.closed = False
        self.config: dict[str, Any] = {}
        self.on_poll: Callable[[FakeConsumer], None] | None = None  # test hook, once per poll
        self.member: str | None = None  # the group's member id: set by an assignment, gone when lost

    # --- scripting (tests) --------------------------------------------------------------
    def revoke(self, keys: list[Key], lost: bool = False) -> None:
        """At the next consume/poll, take ``keys`` away (``on_lost`` if ``lost``)."""
        self._events.append(("lost" if lost else "revoke", keys))

    def assign(self, keys: list[Key]) -> None:
        """At the next consume/poll, (re-)assign ``keys``."""
        self._events.append(("assign", keys))

    def inject_error(self, error: KafkaError) -> None:
        self._errors.append(error)

    # --- the Consumer API the loop uses -------------------------------------------------
    def subscribe(
        self,
        topics: list[str],
        on_assign: Callback | None = None,
        on_revoke: Callback | None = None,
        on_lost: Callback | None = None,
    ) -> None:
        self.topics = list(topics)
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        keys = [(t, p) for t in topics for p in range(self.broker.partitions)]
        self._events.append(("assign", keys if self.initial is None else self.initial))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self._assigned]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        key = (partition.topic, partition.partition)
        if key not in self._assigned:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION, "not assigned"))
        self.position[key] = partition.offset

    def commit(self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True) -> None:
        assert offsets is not None, "the loop commits explicit offsets"
        assert not asynchronous, "the loop commits synchronously"
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if key not in self._assigned:
                raise KafkaException(KafkaError(KafkaError._STATE, f"{key} is not assigned"))
            self.broker.committed[(self.group, key)] = tp.offset
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def store_offsets(self, offsets: list[TopicPartition] | None = None) -> None:
        """Stored offsets are committed at once here (librdkafka: every auto.commit.interval.ms)."""
        assert offsets is not None, "the loop stores explicit offsets"
        self.commit(offsets, asynchronous=False)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.consumes += 1
        self.consume_calls.append((num_messages, timeout))
        got = self._fetch(num_messages, timeout)
        self._empty_streak = 0 if got else self._empty_streak + 1
        if self._empty_streak >= self.drained_after and self.on_drained is not None:
            self.on_drained()
        return got

    def poll(self, timeout: float = -1) -> Message | None:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self)
        got = self._fetch(1, timeout)
        return got[0] if got else None

    def close(self) -> None:
        self.closed = True

    def memberid(self) -> str | None:
        return self.member

    # --- internals ----------------------------------------------------------------------
    def _serve_events(self) -> None:
        while self._events:
            kind, keys = self._events.pop(0)
            callback = self.callbacks.get(kind)
            partitions = [TopicPartition(t, p) for t, p in keys]
            if kind == "assign":
                self.member = f"{self.group}-member"
                if callback is not None:
                    callback(self, partitions)  # before the assignment includes them
                for key in keys:
                    if key not in self._assigned:
                        self._assigned.append(key)
                        committed = self.broker.committed.get((self.group, key), 0)
                        self.position[key] = committed
            else:
                if kind == "lost":
                    self.member = None  # the session expired: no member until assigned again
                if callback is not None:
                    callback(self, partitions)
                self._assigned = [k for k in self._assigned if k not in keys]
                # librdkafka keeps the pause flag; the fetch position is forgotten.
                for key in keys:
                    self.position.pop(key, None)

    def _fetch(self, limit: int, timeout: float) -> list[Message]:
        self._serve_events()
        if self._errors:
            error = self._errors.pop(0)
            return [Message(topic=self.topics[0] if self.topics else None, partition=0, error=error)]
        out: list[Message] = []
        for key in self._assigned:
            if key in self.paused:
                continue
            messages = self.broker.log.get(key, [])
            position = self.position.get(key, 0)
            while position < len(messages) and len(out) < limit:
                out.append(messages[position])
                position += 1
            self.position[key] = position
        if not out:
            self.clock.advance(timeout if timeout > 0 else 0.0)
        return out


@dataclass
class Produced:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers


class FakeProducer:
    """Delivers into ``broker`` on ``poll``/``flush``. ``fail_deliveries`` makes the next
    deliveries fail with that error, ``fail_every`` every delivery (a producer that delivers
    nothing); messages over ``broker.message_max_bytes`` (value, key and headers) are refused
    at ``produce`` with MSG_SIZE_TOO_LARGE, as librdkafka does. ``purge`` fails what is
    pending with _PURGE_QUEUE."""

    def __init__(self, broker: FakeBroker, fail_every: KafkaError | None = None) -> None:
        self.broker = broker
        self.pending: list[tuple[Produced, Callable[[KafkaError | None, Message], None] | None]] = []
        self.delivered: list[Produced] = []
        self.fail_deliveries: list[KafkaError] = []
        self.fail_every = fail_every
        self.flushes = 0
        self.purged = 0

    def produce(
        self,
        topic: str,
        value: bytes | str | None = None,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
        **_: Any,
    ) -> None:
        as_bytes = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers or []]
        raw_value = value.encode() if isinstance(value, str) else value
        raw_key = key.encode() if isinstance(key, str) else key
        size = len(raw_value or b"") + len(raw_key or b"") + sum(len(k) + len(v or b"") for k, v in as_bytes)
        if size > self.broker.message_max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, f"{size} bytes"))
        self.pending.append((Produced(topic, raw_value, raw_key, as_bytes), on_delivery))

    def poll(self, timeout: float = 0) -> int:
        served = 0
        while self.pending:
            produced, callback = self.pending.pop(0)
            error = self.fail_deliveries.pop(0) if self.fail_deliveries else self.fail_every
            message = Message(topic=produced.topic, value=produced.value, key=produced.key)
            if error is None:
                message = self.broker.append(produced.topic, produced.value, produced.key, produced.headers)
                self.delivered.append(produced)
            if callback is not None:
                callback(error, message)
            served += 1
        return served

    def flush(self, timeout: float = -1) -> int:
        self.flushes += 1
        self.poll(0)
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.purged += len(self.pending)
        self.fail_deliveries = [KafkaError(KafkaError._PURGE_QUEUE, "purged")] * len(self.pending)

    def to(self, topic: str) -> list[Produced]:
        return [p for p in self.delivered if p.topic == topic]
