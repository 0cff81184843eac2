"""Every producer writes durably on a replicated cluster (issue #14): acks=all with
idempotence, and a request to a hung leader is given up (and retried at the new leader,
without copies) before the messages themselves time out."""

from __future__ import annotations

from services.common.kafka import producer_config
from services.common.settings import Settings


def test_producers_wait_for_every_in_sync_replica_and_never_duplicate() -> None:
    config = producer_config(Settings())
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
    assert config["socket.timeout.ms"] < config["message.timeout.ms"]


def test_the_request_timeout_can_still_be_set_through_kafka_extra() -> None:
    config = producer_config(Settings(kafka_extra={"socket.timeout.ms": "20000"}))
    assert config["socket.timeout.ms"] == "20000"
