"""A local copy of the suppression state for senders that filter before sending.

Reads the log-compacted topic ``optout.suppressions`` (schemas/SuppressionState.v1.avsc):
one message per subject (``email_sha256:<hex>``, ``phone_sha256:<hex>``, ``cust:<id>``, ...)
with its state per scope, a tombstone (null value) when nothing is suppressed any more.
Compaction keeps the newest message per subject, so reading the topic from the beginning
gives the whole current state::

    from services.suppression.client import SuppressionClient

    client = SuppressionClient.from_settings(settings)      # or SuppressionClient(kafka_config, topic)
    client.load()                                            # from the beginning to the end offsets
    client.follow()                                          # keep consuming in a background thread
    if client.is_suppressed(email="Ada@Example.com", scope="EMAIL_MARKETING"):
        skip()
    client.close()

Raw emails and phones are normalized and hashed exactly as intake does
(``services/domain/subjects.py``); they never leave the process. No consumer group is used
and nothing is committed: each client reads every partition itself.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from services.common.avro import Codec, default_codec
from services.common.contract import Scope
from services.common.errors import RetriableError
from services.common.logging import get_logger
from services.common.records import decode_suppression_state
from services.common.settings import Settings
from services.domain.subjects import (
    IdentifierKind,
    ScopeState,
    answer,
    parse_scope,
    states_of,
    subject_of,
)

log = get_logger(__name__)


_LEADER_MOVING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
}


def _leader_moving(exc: BaseException) -> bool:
    """Pure: a watermark query failed because the partition has no (known) leader yet."""
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    return isinstance(error, KafkaError) and (error.code() in _LEADER_MOVING or error.retriable())


def asked_until(deadline: float, ask: Callable[[], tuple[int, int]], what: str) -> tuple[int, int]:
    """``ask()`` (a partition's watermark offsets), asked again with a short backoff while
    the partition has no known leader (a topic just created, a leader moving), until the
    ``time.monotonic()`` ``deadline``; then ``RetriableError``. Other errors are raised."""
    retrying = Retrying(
        retry=retry_if_exception(_leader_moving),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
        reraise=True,
    )
    try:
        low, high = retrying(ask)
    except KafkaException as exc:
        if _leader_moving(exc):
            raise RetriableError(f"{what} has no leader yet: {exc}") from exc
        raise
    return int(low), int(high)


class SuppressionClient:
    """The current suppression state per subject, read from the compacted topic."""

    def __init__(
        self,
        kafka_config: Mapping[str, str | int | float | bool],
        topic: str,
        phone_region: str = "US",
        codec: Codec | None = None,
    ) -> None:
        self.topic = topic
        self.phone_region = phone_region
        self._codec = codec or default_codec()
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": f"optout-suppression-client-{uuid.uuid4().hex}",  # never committed
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._states: dict[str, tuple[ScopeState, ...]] = {}
        self._lock = threading.Lock()  # the consumer: load, poll and the follow thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: list[int] = []
        self._next: dict[int, int] = {}  # next offset to read, per partition read so far

    @classmethod
    def from_settings(cls, settings: Settings) -> SuppressionClient:
        return cls(settings.kafka_config(), settings.suppressions_topic, settings.default_phone_region)

    # --- reading ---------------------------------------------------------------------------
    def _assign(self, timeout: float) -> None:
        if self._assigned:
            return
        metadata = self._consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RetriableError(f"topic {self.topic} is not there (run `optout topics create`)")
        self._assigned = sorted(metadata.partitions)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._assigned])

    def _watermarks(self, partition: int, deadline: float) -> tuple[int, int]:
        """The partition's low and high offsets (asked again while its leader is not known)."""
        where = TopicPartition(self.topic, partition)
        return asked_until(
            deadline, lambda: self._consumer.get_watermark_offsets(where, timeout=10), str(where)
        )

    def _apply(self, message: Message) -> None:
        key = message.key()
        if key is None:
            return
        subject = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        value = message.value()
        if value is None:
            self._states.pop(subject, None)
            return
        self._states[subject] = states_of(decode_suppression_state(self._codec, value))

    def _consume(self, timeout: float) -> dict[int, int]:
        """Apply what arrives within ``timeout``; return the next offset per partition seen."""
        seen: dict[int, int] = {}
        for message in self._consumer.consume(1000, timeout):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("suppression topic read error", error=error.str())
                continue
            self._apply(message)
            seen[message.partition() or 0] = (message.offset() or 0) + 1
        self._next.update(seen)
        return seen

    def load(self, timeout: float = 120.0) -> int:
        """Read the topic from the beginning up to the end offsets it has now; return the
        number of subjects with a suppressed scope. Raises ``RetriableError`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._assign(min(timeout, 30.0))
            ends = {}
            for p in self._assigned:
                ends[p] = self._watermarks(p, deadline)
            # Read from where an earlier load or poll stopped (the consumer keeps its place).
            position = {p: max(low, self._next.get(p, low)) for p, (low, _) in ends.items()}
            while any(position[p] < high for p, (_, high) in ends.items()):
                if time.monotonic() > deadline:
                    raise RetriableError(f"{self.topic} not read to its end within {timeout:.0f}s")
                for p, offset in self._consume(0.5).items():
                    position[p] = max(position[p], offset)
            return len(self._states)

    def poll(self, timeout: float = 0.0) -> None:
        """Apply whatever newer messages are there (``follow`` does this in a thread)."""
        with self._lock:
            self._assign(30.0)
            self._consume(timeout)

    def follow(self) -> None:
        """Keep consuming in a daemon thread until ``close``: changes apply within ~1 s."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll(0.5)
                except RetriableError as exc:
                    log.warning("suppression topic not readable yet", error=str(exc))
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=loop, name="suppression-client", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            self._consumer.close()

    # --- asking -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._states)

    def subjects(self) -> set[str]:
        """Every subject with a suppressed scope (a copy)."""
        return set(self._states)

    def states(self, subject: str) -> tuple[ScopeState, ...]:
        """The state per scope of one subject (none: nothing suppressed)."""
        return self._states.get(subject, ())

    def is_suppressed(
        self,
        *,
        email: str | None = None,
        phone: str | None = None,
        customer_id: str | None = None,
        email_sha256: str | None = None,
        phone_sha256: str | None = None,
        scope: Scope | str | None = None,
    ) -> bool:
        """Is the person with any of these identifiers suppressed for ``scope`` (None or
        ``ALL``: for any scope)? Raises ``BadIdentifier`` for an identifier that names nobody
        (an email that is not one, say): a sender should not guess."""
        given = {
            IdentifierKind.EMAIL: email,
            IdentifierKind.PHONE: phone,
            IdentifierKind.CUSTOMER_ID: customer_id,
            IdentifierKind.EMAIL_SHA256: email_sha256,
            IdentifierKind.PHONE_SHA256: phone_sha256,
        }
        subjects = [subject_of(kind, value, self.phone_region) for kind, value in given.items() if value]
        if not subjects:
            raise ValueError("is_suppressed needs at least one identifier")
        wanted = parse_scope(scope.value if isinstance(scope, Scope) else scope)
        return any(answer(s, wanted, self._states.get(s, ())).suppressed for s in subjects)
