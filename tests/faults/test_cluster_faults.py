"""The short fault run on a replicated Kafka cluster (issue #14), part of `make test`: a fresh
cluster of three local KRaft nodes is started next to the test stack's broker (its own
ports, 19292-19314, and folder, ``<state>/kafka-cluster-test``), 1,000 opt-outs go through
the whole pipeline while one node is frozen with SIGSTOP for 5 s, then the node leading the
busiest partitions is killed with kill -9 and left down (fenced after the broker session
timeout; its partitions get new leaders). Nothing may be lost, nothing dead-lettered, every
request confirmed. The cluster is killed afterwards (unless the stack itself is a cluster,
`make test BROKERS=3`, which is then used and left running) and no node may be left running.

The full cluster run is `make test-faults BROKERS=3`."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.settings import Settings
from services.devstack import StackInfo, kafka_cluster
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.install import find_java
from services.devstack.kafka_cluster import Cluster
from tests.faults.run_faults import FaultPlan, run

# It starts three more JVMs (its own cluster) and freezes and kills them; the shared broker and
# database stay up, so it runs beside the other tests, one fault run at a time.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("fault-runs")]

# Clear of the single broker (19092-19094) and of the stack's own cluster (19192-19214).
TEST_CLUSTER_PORT_BASE = 19292


@pytest.fixture(scope="module")
def cluster(stack: StackInfo) -> Iterator[tuple[StackInfo, Cluster, float]]:
    """(the stack with the cluster as its Kafka, the cluster, seconds it took to start)."""
    paths = Paths.from_env()
    if stack.kafka_brokers >= 3:  # `make test BROKERS=3`: the stack is the cluster
        yield stack, kafka_cluster.layout(paths, stack.kafka_brokers), 0.0
        return
    try:
        find_java()
    except StackError as exc:
        pytest.skip(f"no local Kafka cluster without Java: {exc}")
    cluster = kafka_cluster.layout(paths, 3, port_base=TEST_CLUSTER_PORT_BASE, name="kafka-cluster-test")
    kafka_cluster.stop_cluster(cluster)  # one left over by an interrupted run
    shutil.rmtree(cluster.directory, ignore_errors=True)  # fresh: no log recovery, no old topics
    started = time.monotonic()
    cluster = kafka_cluster.ensure_running(paths, 3, install=True, cluster=cluster)
    seconds = time.monotonic() - started
    try:
        yield (
            replace(
                stack,
                kafka_bootstrap=cluster.bootstrap,
                kafka_sasl_bootstrap=cluster.sasl_bootstrap,
                kafka_brokers=cluster.size,
            ),
            cluster,
            seconds,
        )
    finally:
        # Thrown away (the next run starts afresh): kill -9 rather than a controlled shutdown.
        for node in cluster.nodes:
            if node.node_id in kafka_cluster.pids(cluster):
                kafka_cluster.kill_node(node)
    assert kafka_cluster.pids(cluster) == {}, "a Kafka node outlived the cluster's stop"


@pytest.mark.timeout(300)
def test_short_cluster_fault_run_loses_nothing(
    cluster: tuple[StackInfo, Cluster, float], tmp_path: Path
) -> None:
    stack, nodes, start_seconds = cluster
    plan = FaultPlan.cluster_short()
    report = run(plan, tmp_path, stack=stack, cluster=nodes)
    report.figures["seconds to start the cluster"] = round(start_seconds, 1)
    print(report.table())
    assert report.faults[f"SIGSTOP a Kafka node for {plan.freeze_seconds:.0f}s, then SIGCONT"] == 1
    assert report.faults["kill -9 Kafka node leading the busiest partitions"] == 1
    assert report.figures["opt-outs published"] == plan.events
    assert report.figures["topic replicas / min.insync.replicas"] == "[3] / ['2']"
    # One node of three left down: every partition lacks a copy, none refuses writes (2 in sync).
    partitions = len(Settings(destinations_file=None).all_topics()) * 6  # the run's topics x partitions
    assert report.figures["partitions under-replicated / refusing writes at the end"] == f"{partitions} / 0"
    assert report.ok, report.table()
