"""Faults of a replicated Kafka cluster (three local KRaft nodes, ``services.devstack.kafka_cluster``),
injected under load by the fault run: kill -9 of the node leading the busiest partitions,
kill -9 of the active controller, one node frozen with SIGSTOP (then SIGCONT), and a rolling
restart of every node. After each, the cluster must become fully replicated again (every
partition's replicas back in sync) before the next one starts, as an operator would wait;
how long that took is reported."""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from services.devstack import kafka_cluster
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.kafka_broker import BrokerNode, stop_node
from services.devstack.kafka_cluster import Cluster
from tests.support.pipeline import wait_until

REJOIN_TIMEOUT_SECONDS = 120.0
REPLICATED_TIMEOUT_SECONDS = 180.0


def _say(line: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] cluster: {line}\n")


@dataclass
class ClusterFaults:
    paths: Paths
    cluster: Cluster
    topics: list[str]  # the run's topics: "busiest" is measured on them
    rng: random.Random
    faults: Counter[str]
    recoveries: list[tuple[str, float]] = field(default_factory=list)  # (figure, seconds)
    down: set[int] = field(default_factory=set)  # nodes killed and not started again

    # --- finding the victims ----------------------------------------------------------------
    def _end_offsets(self) -> dict[tuple[str, int], int]:
        admin = self.cluster.admin()
        leaders = kafka_cluster.partition_leaders(admin, self.topics)
        futures = admin.list_offsets(
            {TopicPartition(t, p): OffsetSpec.latest() for (t, p) in leaders}, request_timeout=10
        )
        out = {}
        for tp, future in futures.items():
            try:
                out[(tp.topic, tp.partition)] = future.result(15).offset
            except KafkaException:  # a partition without a leader right now: skip it
                continue
        return out

    def busiest_leader(self, window: float = 2.0) -> tuple[BrokerNode, int]:
        """The live node leading the partitions that took the most messages over ``window``
        seconds, and how many partitions it leads among the run's topics."""
        before = self._end_offsets()
        time.sleep(window)
        after = self._end_offsets()
        leaders = kafka_cluster.partition_leaders(self.cluster.admin(), self.topics)
        load: Counter[int] = Counter()
        led: Counter[int] = Counter()
        for tp, leader in leaders.items():
            if leader < 0 or leader in self.down:
                continue
            led[leader] += 1
            load[leader] += after.get(tp, 0) - before.get(tp, 0)
        if not load:
            node = self.rng.choice([n for n in self.cluster.nodes if n.node_id not in self.down])
            return node, 0
        top = max(load.values())
        chosen = self.rng.choice(sorted(n for n, v in load.items() if v == top))
        return self.cluster.node(chosen), led[chosen]

    # --- the faults -------------------------------------------------------------------------
    def _settle(self, label: str) -> None:
        seconds = kafka_cluster.wait_fully_replicated(self.cluster, REPLICATED_TIMEOUT_SECONDS)
        self.recoveries.append((f"seconds to full replication after {label}", seconds))
        _say(f"fully replicated again {seconds:.1f}s after {label} ended")

    def _restart(self, node: BrokerNode, label: str | None = None) -> None:
        started = time.monotonic()
        kafka_cluster.start_node(self.paths, self.cluster, node, REJOIN_TIMEOUT_SECONDS)
        self.down.discard(node.node_id)
        if label is not None:
            self.recoveries.append(
                (f"seconds for the node to start and rejoin after {label}", time.monotonic() - started)
            )

    def kill_busiest_leader(self, down_seconds: float, restart: bool = True) -> None:
        node, led = self.busiest_leader()
        _say(f"kill -9 node {node.node_id} (leads {led} of the run's partitions, the busiest)")
        kafka_cluster.kill_node(node)
        self.down.add(node.node_id)
        self.faults["kill -9 Kafka node leading the busiest partitions"] += 1
        if not restart:
            self.faults["  (left down: the cluster carries on with two nodes)"] += 1
            return
        time.sleep(down_seconds)
        self._restart(node, "the leader kill")
        self._settle("the leader kill")

    def kill_controller(self, down_seconds: float) -> None:
        controller = kafka_cluster.active_controller(self.paths, self.cluster)
        node = self.cluster.node(controller)
        _say(f"kill -9 node {controller}, the active controller")
        killed_at = time.monotonic()
        kafka_cluster.kill_node(node)
        self.down.add(controller)
        self.faults["kill -9 active KRaft controller"] += 1
        successor = self._new_controller(exclude=controller)
        self.recoveries.append(("seconds until a new controller was elected", time.monotonic() - killed_at))
        _say(f"node {successor} is the active controller now")
        time.sleep(max(0.0, down_seconds - (time.monotonic() - killed_at)))
        self._restart(node, "the controller kill")
        self._settle("the controller kill")

    def _new_controller(self, exclude: int, timeout: float = 60.0) -> int:
        found: list[int] = []

        def elected() -> bool:
            try:  # StackError: the quorum is still electing
                leader = kafka_cluster.active_controller(self.paths, self.cluster)
            except StackError:
                return False
            found.append(leader)
            return leader != exclude

        wait_until(elected, timeout=timeout, interval=0.5, message="a new active controller")
        return found[-1]

    def freeze(self, seconds: float) -> None:
        node, led = self.busiest_leader()
        _say(f"SIGSTOP node {node.node_id} for {seconds:.0f}s (leads {led} of the run's partitions)")
        kafka_cluster.freeze(node)
        try:
            time.sleep(seconds)
        finally:
            kafka_cluster.thaw(node)
        self.faults[f"SIGSTOP a Kafka node for {seconds:.0f}s, then SIGCONT"] += 1
        self._settle("the freeze")

    def rolling_restart(self) -> None:
        started = time.monotonic()
        for node in self.cluster.nodes:
            _say(f"rolling restart: node {node.node_id}")
            stop_node(node)
            self._restart(node)
            self._settle(f"restarting node {node.node_id}")
        self.faults["rolling restart of every Kafka node (one at a time)"] += 1
        self.recoveries.append(("seconds for the rolling restart (all nodes)", time.monotonic() - started))
