"""A ``StackInfo`` for unit tests of the devstack's pure parts (no servers behind it)."""

from __future__ import annotations

from services.devstack import StackInfo


def stack_info(brokers: int) -> StackInfo:
    """A stack of ``brokers`` Kafka nodes of our own (0: an external broker)."""
    return StackInfo(
        kafka_bootstrap="b",
        kafka_sasl_bootstrap=None,
        database_url="postgresql://a@h/d",
        admin_database_url="postgresql://b@h/d",
        superuser_database_url=None,
        started_here=brokers > 0,
        kafka_brokers=brokers,
    )
