"""Topics that carry raw contact details get ``retention.ms`` from
OPTOUT_PII_TOPIC_RETENTION_HOURS, on creation and on existing topics (``optout topics create``)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from confluent_kafka.admin import ConfigResource

from services.common.contract import Identifier
from services.common.kafka import make_admin, pii_topics
from services.common.settings import Settings

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def _config_ms(cfg: Settings, topics: list[str], name: str = "retention.ms") -> dict[str, int]:
    admin = make_admin(cfg)
    futures = admin.describe_configs([ConfigResource("TOPIC", t) for t in topics])
    return {res.name: int(f.result(30)[name].value) for res, f in futures.items()}


def test_pii_topics_are_derived_from_the_contract() -> None:
    cfg = Settings(topic_prefix="x.")
    chosen = set(pii_topics(cfg))
    raw = {Identifier.EMAIL, Identifier.PHONE, Identifier.POSTAL_ADDRESS}
    assert {cfg.requests_topic, cfg.confirmations_topic} <= chosen
    assert {t for t in cfg.all_topics() if t.endswith(".dlq")} <= chosen
    for d in cfg.destinations:
        assert (cfg.suppress_topic(d.id) in chosen) == bool(d.identifiers & raw), d.id
    assert cfg.acks_topic not in chosen
    assert cfg.suppress_topic("third_party_sharing") not in chosen  # hashes and customer ids only
    assert chosen <= set(cfg.all_topics())


def test_topics_create_sets_and_then_changes_retention_of_pii_topics(base_settings: dict[str, Any]) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPTOUT_KAFKA_BOOTSTRAP": str(base_settings["kafka_bootstrap"]),
        "OPTOUT_TOPIC_PREFIX": prefix,
        "OPTOUT_TOPIC_PARTITIONS": "1",
        "OPTOUT_PII_TOPIC_RETENTION_HOURS": "48",
    }

    def topics_create(hours: int) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "topics", "create"],
            env={**env, "OPTOUT_PII_TOPIC_RETENTION_HOURS": str(hours)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    cfg = Settings(kafka_bootstrap=base_settings["kafka_bootstrap"], topic_prefix=prefix)
    pii = pii_topics(cfg)
    other = [t for t in cfg.all_topics() if t not in pii]
    first = topics_create(48)
    assert sum(line.startswith("created") for line in first) == len(cfg.all_topics())
    assert not any(line.startswith("retention") for line in first)  # set on creation
    retention = _config_ms(cfg, cfg.all_topics())
    assert {t: retention[t] for t in pii} == {t: 48 * HOUR_MS for t in pii}
    assert all(retention[t] != 48 * HOUR_MS for t in other)
    segments = _config_ms(cfg, pii, "segment.ms")
    assert set(segments.values()) == {24 * HOUR_MS}  # a message outlives retention by a day at most

    second = topics_create(12)
    changed = [line for line in second if line.startswith("retention")]
    assert len(changed) == len(pii)  # one line per topic changed
    assert all("12 h" in line for line in changed)
    retention = _config_ms(cfg, cfg.all_topics())
    assert {t: retention[t] for t in pii} == {t: 12 * HOUR_MS for t in pii}
    assert set(_config_ms(cfg, pii, "segment.ms").values()) == {12 * HOUR_MS}
    assert all(retention[t] != 12 * HOUR_MS for t in other)

    # Run again with the same setting: nothing to change.
    assert [line for line in topics_create(12) if line.startswith("retention")] == []
