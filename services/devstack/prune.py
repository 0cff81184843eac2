"""``python -m services.devstack prune``: delete the topics that test and benchmark runs left
on the devstack's own broker.

Every test (``tests/support/pipeline.py``: ``t`` and 10 hex digits), fault run and pipeline
benchmark (``f`` and 8 hex digits) and intake benchmark (``bench`` and 8 hex digits) works
on topics of a fresh prefix and deletes them when it ends; a run that is killed leaves them.
They pile up (760 topics, 4,249 partitions on 2026-12-02), and the broker keeps serving them
(each partition's files, retention checks, the log cleaner of every compacted topic) while
later benchmarks measure it. Topics of any other name (the pipeline's own, Kafka's internal
ones, a prefix you chose) are kept. Only our own broker: with OPTOUT_KAFKA_BOOTSTRAP naming
another one, nothing is deleted. Run it while no tests or benchmarks run: their live topics
have the same names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from services.devstack.errors import StackError
from services.devstack.stack import StackInfo

# The fresh prefixes of test, fault-run and benchmark topics (see the module's docstring).
RUN_PREFIX = re.compile(r"^(?:t[0-9a-f]{10}|f[0-9a-f]{8}|bench[0-9a-f]{8})\.")


def left_by_runs(topics: Iterable[str]) -> list[str]:
    """Pure: the names among ``topics`` that carry a test or benchmark run's prefix, sorted."""
    return sorted(t for t in topics if RUN_PREFIX.match(t))


@dataclass(frozen=True)
class Pruned:
    topics: int
    partitions: int
    kept: int


def prune(info: StackInfo, dry_run: bool = False, timeout: float = 60.0) -> Pruned:
    """Delete (or with ``dry_run`` only count) the run topics on our broker."""
    if info.kafka_brokers == 0:
        raise StackError("the broker is not ours (OPTOUT_KAFKA_BOOTSTRAP): nothing deleted")
    admin = AdminClient({"bootstrap.servers": info.kafka_bootstrap})
    metadata = admin.list_topics(timeout=timeout).topics
    doomed = left_by_runs(metadata)
    partitions = sum(len(metadata[t].partitions) for t in doomed)
    if doomed and not dry_run:
        for topic, future in admin.delete_topics(doomed, operation_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise StackError(f"could not delete topic {topic}: {exc.args[0].str()}") from exc
    return Pruned(len(doomed), partitions, len(metadata) - len(doomed))
