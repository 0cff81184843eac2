"""Parsing librdkafka statistics into per-partition committed/high-watermark offsets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.observability.stats import parse_stats


def _partition(
    n: int, committed: int, hi: int, lo: int = 0, desired: bool = True, fetch_state: str = "active"
) -> dict[str, Any]:
    # Shaped like librdkafka 2.x output (trimmed to the fields that matter plus a few others).
    return {
        "partition": n,
        "broker": 1,
        "leader": 1,
        "desired": desired,
        "unknown": False,
        "fetch_state": fetch_state,
        "query_offset": -2,
        "next_offset": hi,
        "app_offset": hi,
        "stored_offset": hi,
        "commited_offset": committed,
        "committed_offset": committed,
        "eof_offset": hi,
        "lo_offset": lo,
        "hi_offset": hi,
        "ls_offset": hi,
        "consumer_lag": -1 if committed < 0 else hi - committed,
        "rxmsgs": 5,
    }


def _stats(partitions: dict[str, dict[str, Any]], topic: str = "t.optout.requests") -> str:
    return json.dumps(
        {
            "name": "rdkafka#consumer-3",
            "client_id": "rdkafka",
            "type": "consumer",
            "time": 1795932227,
            "cgrp": {"state": "up", "join_state": "steady", "rebalance_cnt": 1, "assignment_size": 2},
            "brokers": {
                "127.0.0.1:19092/1": {"name": "127.0.0.1:19092/1", "nodeid": 1, "state": "UP"},
                "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": -1, "state": "UP"},
            },
            "topics": {topic: {"topic": topic, "partitions": partitions}},
        }
    )


def test_committed_and_high_watermark_per_partition() -> None:
    raw = _stats({"0": _partition(0, 3, 5), "1": _partition(1, 10, 40, lo=2)})
    stats = parse_stats(raw)
    assert [(p.topic, p.partition, p.committed, p.high, p.low) for p in stats.partitions] == [
        ("t.optout.requests", 0, 3, 5, 0),
        ("t.optout.requests", 1, 10, 40, 2),
    ]
    assert [p.lag for p in stats.partitions] == [2, 30]
    assert stats.group_state == "up" and stats.assignment_size == 2
    assert stats.brokers_up == 1  # the logical GroupCoordinator entry is not a broker
    assert stats.time == 1795932227.0


def test_internal_partition_minus_one_is_skipped() -> None:
    internal = _partition(-1, -1001, -1001, lo=-1001, desired=False, fetch_state="none")
    stats = parse_stats(_stats({"-1": internal, "0": _partition(0, 1, 4)}))
    assert [p.partition for p in stats.partitions] == [0]


def test_no_offset_values_are_skipped() -> None:
    stats = parse_stats(
        _stats(
            {
                "0": _partition(0, -1001, 5),  # nothing committed yet
                "1": _partition(1, 3, -1001),  # high watermark not known yet
                "2": _partition(2, 4, 9, lo=-1001),  # low unknown: kept, low None
            }
        )
    )
    assert [(p.partition, p.low) for p in stats.partitions] == [(2, None)]
    assert stats.partitions[0].lag == 5


def test_partitions_no_longer_consumed_are_skipped() -> None:
    revoked = _partition(1, 3, 9, desired=False, fetch_state="none")
    stats = parse_stats(_stats({"0": _partition(0, 1, 4), "1": revoked}))
    assert [p.partition for p in stats.partitions] == [0]


def test_producer_statistics_and_empty_documents_have_no_partitions() -> None:
    stats = parse_stats(json.dumps({"name": "rdkafka#producer-1", "type": "producer", "time": 1}))
    assert stats.partitions == () and stats.group_state is None and stats.brokers_up == 0


@pytest.mark.parametrize("raw", ["not json", "[1, 2]"])
def test_unreadable_statistics_raise_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_stats(raw)
