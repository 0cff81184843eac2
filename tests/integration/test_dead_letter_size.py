"""An oversized poison message must not stop a service (issue #10, pipeline): a ~900 KiB
value with ~600 KiB of headers (accepted by the broker because it compresses well) is
dead-lettered by a connector and by intake, cut under the broker's ~1 MiB limit and
saying what was cut; a dead letter the DLQ topic still refuses becomes a minimal record.
Each time the service keeps running and processes the next message."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from services.common.kafka import MAX_DEAD_LETTER_BYTES, DeliveryTracker, make_producer
from services.common.settings import Settings
from services.connectors.registry import connector_runner
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from tests.integration.test_confirmer import _set_max_message_bytes
from tests.integration.test_connectors import commands, publish
from tests.support.pipeline import Record, isolated_settings, read_topic, running

pytestmark = pytest.mark.integration

VALUE_BYTES = 900 * 1024
HEADERS = [("trace", b"t-1"), *[(f"blob{i}", b"h" * 200 * 1024) for i in range(3)]]


def _publish_oversized(cfg: Settings, topic: str) -> None:
    # The publisher's own limit is raised; the broker checks the compressed batch.
    tracker = DeliveryTracker(make_producer(cfg, **{"message.max.bytes": 4_000_000}))
    value = b"\x00not avro " * (VALUE_BYTES // 10)
    tracker.produce(topic, value, key=b"oversized", headers=list(HEADERS))
    tracker.wait()


def _check_dead_letter(record: Record, service: str, topic: str) -> None:
    size = (
        len(record.value or b"")
        + len(record.key or b"")
        + sum(len(k) + len(v) for k, v in record.headers.items())
    )
    assert size <= MAX_DEAD_LETTER_BYTES
    assert record.key == b"oversized"
    assert record.headers["optout.dlq.reason"] == "undecodable"
    assert record.headers["optout.dlq.service"] == service
    assert record.headers["optout.dlq.topic"] == topic
    assert record.headers["trace"] == "t-1"
    assert record.headers["optout.dlq.headers_dropped"] == "blob0,blob1,blob2"
    assert record.headers["optout.dlq.truncated_from_bytes"] == str(VALUE_BYTES // 10 * 10)


def test_a_connector_dead_letters_an_oversized_message_and_carries_on(
    base_settings: dict[str, Any], tmp_path: Path
) -> None:
    cfg = isolated_settings(base_settings, mail_house_dir=str(tmp_path))
    good = commands("mail_house", 1)
    _publish_oversized(cfg, cfg.suppress_topic("mail_house"))
    publish(cfg, "mail_house", good)
    with running(connector_runner("mail_house", cfg), cfg, "mail_house"):
        dead = read_topic(cfg, cfg.suppress_dlq_topic("mail_house"), expect=1, timeout=30)
        acks = read_topic(cfg, cfg.acks_topic, expect=1, timeout=30)
    assert len(dead) == 1
    _check_dead_letter(dead[0], "connector.mail_house", cfg.suppress_topic("mail_house"))
    assert [a.decoded()["command_id"] for a in acks] == [good[0]["command_id"]]


def test_intake_dead_letters_an_oversized_message_and_carries_on(base_settings: dict[str, Any]) -> None:
    cfg = isolated_settings(base_settings)
    _publish_oversized(cfg, cfg.requests_topic)
    publisher = RequestPublisher(cfg)
    publisher.publish(
        [
            publisher.prepare(
                {"event_id": "evt-after-oversized", "email": "ok@example.com", "scopes": ["EMAIL_MARKETING"]}
            )
        ]
    )
    with running(run_intake, cfg, "intake"):
        dead = read_topic(cfg, cfg.requests_dlq_topic, expect=1, timeout=30)
        fanned_out = read_topic(cfg, cfg.suppress_topic("email_provider"), expect=1, timeout=30)
    assert len(dead) == 1
    _check_dead_letter(dead[0], "intake", cfg.requests_topic)
    assert [c.decoded()["request_id"] for c in fanned_out] == ["evt-after-oversized"]


def test_a_dead_letter_the_dlq_topic_refuses_is_replaced_by_a_minimal_record(
    base_settings: dict[str, Any], tmp_path: Path
) -> None:
    cfg = isolated_settings(base_settings, mail_house_dir=str(tmp_path), retry_max_backoff_seconds=1.0)
    dlq = cfg.suppress_dlq_topic("mail_house")
    _set_max_message_bytes(cfg, dlq, 64 * 1024)  # e.g. an operator's lower limit on the DLQ
    good = commands("mail_house", 1)
    tracker = DeliveryTracker(make_producer(cfg))
    tracker.produce(cfg.suppress_topic("mail_house"), os.urandom(300 * 1024), key=b"random")  # incompressible
    tracker.wait()
    publish(cfg, "mail_house", good)
    with running(connector_runner("mail_house", cfg), cfg, "mail_house"):
        acks = read_topic(cfg, cfg.acks_topic, expect=1, timeout=30)
        dead = read_topic(cfg, dlq, expect=1, timeout=30)
    assert [a.decoded()["command_id"] for a in acks] == [good[0]["command_id"]]
    assert len(dead) == 1 and dead[0].value == b"" and dead[0].key == b"random"
    assert dead[0].headers["optout.dlq.minimal"] == "1"
    assert dead[0].headers["optout.dlq.reason"] == "undecodable"
    assert dead[0].headers["optout.dlq.topic"] == cfg.suppress_topic("mail_house")
