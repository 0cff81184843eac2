"""``optout topics create`` changes topic settings with IncrementalAlterConfigs. KRaft
answers once the controller has committed the change; the broker applies it a moment later
(CI once described the old min.insync.replicas right after ``topics create`` returned). The
apply functions return only once the broker describes the new values. A small fake admin
stands in for the broker's lagging metadata cache; tests/integration/test_topic_replication.py
runs the same against the real broker."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka.admin._config import ConfigEntry, ConfigResource

from services.common import kafka
from services.common.settings import Settings


@dataclass
class _Topic:
    partitions: dict[int, Any] = field(default_factory=dict)
    error: Any = None


@dataclass
class _Listed:
    topics: dict[str, _Topic]


class _LaggingAdmin:
    """Applies an alter to what it describes only after ``lag`` further describes."""

    def __init__(self, topics: list[str], configs: dict[str, str], lag_after_alter: int = 3) -> None:
        self.served = {t: dict(configs) for t in topics}
        self.pending: dict[str, dict[str, str]] = {}
        self.lag_after_alter = lag_after_alter
        self.lag = 0

    def list_topics(self, timeout: float) -> _Listed:
        return _Listed({t: _Topic() for t in self.served})

    def describe_configs(
        self, resources: list[ConfigResource], request_timeout: float
    ) -> dict[Any, Future[Any]]:
        if self.pending and self.lag == 0:
            for topic, values in self.pending.items():
                self.served[topic].update(values)
            self.pending = {}
        self.lag -= 1
        out: dict[Any, Future[Any]] = {}
        for res in resources:
            future: Future[Any] = Future()
            future.set_result({n: ConfigEntry(n, v) for n, v in self.served[res.name].items()})
            out[res] = future
        return out

    def incremental_alter_configs(
        self, resources: list[ConfigResource], request_timeout: float
    ) -> dict[Any, Future[Any]]:
        out: dict[Any, Future[Any]] = {}
        for res in resources:
            self.pending[res.name] = {e.name: str(e.value) for e in res.incremental_configs}
            future: Future[Any] = Future()
            future.set_result(None)
            out[res] = future
        self.lag = self.lag_after_alter  # describes after this alter that still see the old values
        return out

    def described_now(self, topic: str, name: str) -> str:
        return self.served[topic][name]


def _settings(**extra: Any) -> Settings:
    return Settings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.", **extra)


def test_min_insync_replicas_returns_only_once_the_broker_describes_the_new_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _settings(topic_replication_factor=3, topic_min_insync_replicas=2)
    admin = _LaggingAdmin(cfg.all_topics(), {"min.insync.replicas": "1"})
    monkeypatch.setattr(kafka, "make_admin", lambda settings: admin)
    changed = kafka.apply_min_insync_replicas(cfg, timeout=5)
    assert sorted(changed) == sorted(cfg.all_topics())
    assert {admin.described_now(t, "min.insync.replicas") for t in cfg.all_topics()} == {"2"}


def test_pii_retention_returns_only_once_the_broker_describes_the_new_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _settings()
    pii = kafka.pii_topics(cfg)
    wanted = kafka.pii_topic_config(cfg)
    admin = _LaggingAdmin(pii, {name: "1" for name in wanted})
    monkeypatch.setattr(kafka, "make_admin", lambda settings: admin)
    changes = kafka.apply_pii_retention(cfg, timeout=5)
    assert sorted(c.topic for c in changes) == sorted(pii)
    for topic in pii:
        assert {n: admin.described_now(topic, n) for n in wanted} == wanted


def test_a_setting_never_served_raises_a_retriable_error_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _settings(topic_replication_factor=3, topic_min_insync_replicas=2)
    admin = _LaggingAdmin(cfg.all_topics(), {"min.insync.replicas": "1"}, lag_after_alter=10**9)
    monkeypatch.setattr(kafka, "make_admin", lambda settings: admin)
    with pytest.raises(kafka.RetriableError, match="not yet served"):
        kafka.apply_min_insync_replicas(cfg, timeout=0.3)
