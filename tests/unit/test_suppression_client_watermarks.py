"""The suppression client asks again for a partition's offsets while its leader is not known
yet (a topic just created; seen once in a test run as NOT_LEADER_FOR_PARTITION)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.common.errors import RetriableError
from services.suppression.client import asked_until


def failing(codes: list[int], calls: list[int]) -> Callable[[], tuple[int, int]]:
    def ask() -> tuple[int, int]:
        calls.append(1)
        if codes:
            raise KafkaException(KafkaError(codes.pop(0)))
        return (3, 7)

    return ask


def test_a_partition_without_a_leader_yet_is_asked_again() -> None:
    calls: list[int] = []
    ask = failing([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE], calls)
    assert asked_until(time.monotonic() + 10, ask, "t [0]") == (3, 7)
    assert len(calls) == 3


def test_a_leader_still_missing_at_the_deadline_is_a_retriable_error() -> None:
    calls: list[int] = []
    ask = failing([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000, calls)
    with pytest.raises(RetriableError, match=r"t \[0\] has no leader yet"):
        asked_until(time.monotonic() + 0.3, ask, "t [0]")
    assert len(calls) >= 2


def test_other_errors_are_raised_at_once() -> None:
    calls: list[int] = []
    ask = failing([KafkaError.TOPIC_AUTHORIZATION_FAILED], calls)
    with pytest.raises(KafkaException):
        asked_until(time.monotonic() + 10, ask, "t [0]")
    assert len(calls) == 1
