"""The local replicated Kafka cluster's layout and settings (issue #14): three nodes with
their own ports and folders, a static quorum of all three, replicated internal topics, and
the settings `devstack env` exports for it. Starting it is exercised by the short cluster
fault run (tests/faults/test_cluster_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigurationError
from services.common.settings import load_settings
from services.devstack import config as c
from services.devstack import kafka_broker, kafka_cluster
from services.devstack.config import Paths
from services.devstack.errors import StackError
from tests.support.stack_info import stack_info


@pytest.fixture(autouse=True)
def _no_stack_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (c.ENV_BROKERS, c.ENV_KAFKA_PORT_BASE):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(root=tmp_path, state_dir=tmp_path / ".run", kafka_libs=tmp_path / "libs")


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize(("raw", "count"), [("", 1), ("1", 1), ("3", 3), (" 5 ", 5)])
def test_broker_count_reads_the_setting(monkeypatch: pytest.MonkeyPatch, raw: str, count: int) -> None:
    monkeypatch.setenv(c.ENV_BROKERS, raw)
    assert c.broker_count() == count


@pytest.mark.parametrize("raw", ["2", "4", "0", "three", "-3"])
def test_an_even_or_odd_count_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(c.ENV_BROKERS, raw)
    with pytest.raises(StackError, match=r"OPTOUT_DEVSTACK_BROKERS must be one of 1, 3, 5") as err:
        c.broker_count()
    assert "\n" not in str(err.value)


def test_the_cluster_ports_stay_clear_of_the_single_broker(paths: Paths) -> None:
    single = kafka_broker.single_node(paths)
    assert single.ports == (19092, 19093, 19094)
    cluster = kafka_cluster.layout(paths, 3)
    ports = [p for n in cluster.nodes for p in n.ports]
    assert ports == [19192, 19193, 19194, 19202, 19203, 19204, 19212, 19213, 19214]
    assert not set(ports) & set(single.ports)
    assert cluster.bootstrap == "127.0.0.1:19192,127.0.0.1:19202,127.0.0.1:19212"
    assert cluster.sasl_bootstrap == "127.0.0.1:19194,127.0.0.1:19204,127.0.0.1:19214"
    assert len({n.directory for n in cluster.nodes}) == 3
    assert len({n.log_file for n in cluster.nodes}) == 3
    assert all(n.directory.parent == paths.kafka_cluster_dir for n in cluster.nodes)


def test_a_port_base_moves_either_kafka(monkeypatch: pytest.MonkeyPatch, paths: Paths) -> None:
    monkeypatch.setenv(c.ENV_KAFKA_PORT_BASE, "29000")
    assert kafka_broker.single_node(paths).bootstrap == "127.0.0.1:29000"
    assert kafka_cluster.layout(paths, 3).bootstrap == "127.0.0.1:29000,127.0.0.1:29010,127.0.0.1:29020"
    monkeypatch.setenv(c.ENV_KAFKA_PORT_BASE, "80")
    with pytest.raises(StackError, match="OPTOUT_DEVSTACK_KAFKA_PORT_BASE must be a port number"):
        kafka_cluster.layout(paths, 3)


def test_each_node_is_a_voter_of_one_static_quorum_with_replicated_defaults(paths: Paths) -> None:
    cluster = kafka_cluster.layout(paths, 3, port_base=19192)
    for node in cluster.nodes:
        props = _props(kafka_broker.server_properties(node))
        assert props["process.roles"] == "broker,controller"
        assert props["node.id"] == str(node.node_id)
        assert props["controller.quorum.voters"] == ("1@127.0.0.1:19193,2@127.0.0.1:19203,3@127.0.0.1:19213")
        assert "controller.quorum.bootstrap.servers" not in props
        assert props["log.dirs"] == str(node.data)
        assert props["broker.rack"] == f"rack-{node.node_id}"
        assert props["unclean.leader.election.enable"] == "false"
        for key in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
        ):
            assert props[key] == "3", key
        assert props["min.insync.replicas"] == "2"
        assert props["transaction.state.log.min.isr"] == "2"
        assert "-Xmx384m" in node.heap


def test_the_single_broker_keeps_its_configuration(paths: Paths) -> None:
    props = _props(kafka_broker.server_properties(kafka_broker.single_node(paths)))
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert "controller.quorum.voters" not in props
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert "broker.rack" not in props
    assert props["log.dirs"] == str(paths.kafka_data)


def test_the_cluster_environment_asks_for_three_copies_two_in_sync() -> None:
    env = stack_info(3).env()
    assert env["OPTOUT_TOPIC_REPLICATION_FACTOR"] == "3"
    assert env["OPTOUT_TOPIC_MIN_INSYNC_REPLICAS"] == "2"
    for brokers in (0, 1):
        assert "OPTOUT_TOPIC_REPLICATION_FACTOR" not in stack_info(brokers).env()
        assert "OPTOUT_TOPIC_MIN_INSYNC_REPLICAS" not in stack_info(brokers).env()


def test_min_insync_replicas_above_the_replication_factor_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPTOUT_TOPIC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("OPTOUT_TOPIC_MIN_INSYNC_REPLICAS", "4")
    with pytest.raises(ConfigurationError, match=r"OPTOUT_TOPIC_MIN_INSYNC_REPLICAS is invalid.*exceeds"):
        load_settings()
    monkeypatch.setenv("OPTOUT_TOPIC_MIN_INSYNC_REPLICAS", "2")
    assert load_settings().topic_min_insync_replicas == 2
