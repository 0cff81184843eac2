"""create_topics returns only once the broker serves the new topics' metadata.

KRaft commits a new topic on the controller and answers CreateTopics before the broker's
metadata cache has applied it; a client that listed topics (or produced) right after could
see none of them. The suite's topic clean-up test failed that way on CI."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.common.kafka import create_topics, make_admin
from services.common.settings import Settings

pytestmark = pytest.mark.integration


def test_created_topics_are_listed_with_leaders_as_soon_as_create_returns(
    base_settings: dict[str, Any],
) -> None:
    for _ in range(10):
        cfg = Settings(
            **{**base_settings, "topic_prefix": f"t{uuid.uuid4().hex[:10]}.", "topic_partitions": 3}
        )
        admin = make_admin(cfg)
        try:
            assert sorted(create_topics(cfg, cfg.all_topics())) == sorted(cfg.all_topics())
            listed = admin.list_topics(timeout=10).topics
            missing = [t for t in cfg.all_topics() if t not in listed]
            assert missing == [], f"created but not yet in the metadata: {missing}"
            leaderless = [
                (t, p)
                for t in cfg.all_topics()
                for p, meta in listed[t].partitions.items()
                if meta.leader < 0
            ]
            assert leaderless == []
        finally:
            for future in admin.delete_topics(cfg.all_topics(), operation_timeout=30).values():
                future.result(30)
