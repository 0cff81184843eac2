"""The test helpers that wait on the broker's state instead of sleeping."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from services.common.kafka import make_admin, make_producer
from tests.support.pipeline import (
    delete_isolated_topics,
    isolated_settings,
    uncommitted,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_uncommitted_counts_what_a_group_has_not_committed(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(base_settings)
    topic, group = cfg.acks_topic, cfg.group("helper-test")
    assert uncommitted(cfg, group, (topic,)) == 0  # nothing there, nothing owed
    producer = make_producer(cfg)
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"{i}".encode(), partition=i % 3)
    assert producer.flush(10) == 0
    assert uncommitted(cfg, group, (topic,)) == 5  # no commit at all yet
    committer = Consumer({**cfg.kafka_config(), "group.id": group, "enable.auto.commit": False})
    try:
        committer.commit(
            offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 1)], asynchronous=False
        )
        assert uncommitted(cfg, group, (topic,)) == 2  # one of partition 1, partition 2 uncommitted
        with pytest.raises(AssertionError, match="helper-test"):
            wait_committed(cfg, {group: (topic,)}, timeout=1)
        committer.commit(
            offsets=[TopicPartition(topic, 1, 2), TopicPartition(topic, 2, 1)], asynchronous=False
        )
    finally:
        committer.close()
    wait_committed(cfg, {group: (topic,)}, timeout=10)


def test_topics_of_isolated_settings_are_deleted_after_the_test(base_settings):
    # (The autouse fixture calls delete_isolated_topics after every test; here it is called
    # early, to see it work.)
    cfg = isolated_settings(base_settings)
    admin = make_admin(cfg)

    def ours() -> list[str]:
        return [t for t in admin.list_topics(timeout=10).topics if t.startswith(cfg.topic_prefix)]

    assert sorted(ours()) == sorted(cfg.all_topics())
    assert sorted(delete_isolated_topics()) == sorted(cfg.all_topics())
    wait_until(lambda: ours() == [], timeout=30, message="the test's topics gone")
