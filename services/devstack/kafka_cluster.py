"""A local replicated Kafka cluster (OPTOUT_DEVSTACK_BROKERS=3): three KRaft nodes, each a
broker and a controller (combined mode) in its own JVM with a small heap, its own ports and
folders, one static quorum of all three voters. Internal topics get replication factor 3 and
min.insync.replicas 2; each node has its own rack (``broker.rack``).

    <state>/kafka-cluster/
      cluster.id   the id every node was formatted with
      voters       the quorum (``1@127.0.0.1:19193,...``) the nodes were formatted for
      node-1/ node-2/ node-3/   server.properties, log4j2.properties, kafka.pid, data/
    <state>/logs/kafka-cluster-node-1.log ...

A test may run a throwaway cluster beside it (``layout(..., name="kafka-cluster-test")``
on other ports); ``stop`` (``make down``) stops every cluster under the state dir.

Besides starting and stopping the cluster, this module offers what an operator (and the
fault run, ``tests/faults``) does to one node: kill -9, SIGSTOP/SIGCONT, a controlled
restart, waiting until every partition is fully replicated again, and finding the active
controller and the leader of each partition.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from services.devstack import config as c
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.install import ensure_kafka_jars, find_java
from services.devstack.kafka_broker import (
    BrokerNode,
    check_ports_free,
    format_storage,
    formatted,
    kafka_answers,
    new_cluster_id,
    node_pid,
    prepare_node,
    spawn,
    stop_node,
    wait_metadata,
    wait_ports,
)
from services.devstack.procs import pid_alive, wait_for

log = structlog.get_logger()

METADATA_QUORUM_TOOL = "org.apache.kafka.tools.MetadataQuorumCommand"
DEFAULT_NAME = "kafka-cluster"  # <state>/kafka-cluster; other clusters: <state>/kafka-cluster-*


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[BrokerNode, ...]

    @property
    def bootstrap(self) -> str:
        """Every node's PLAINTEXT listener: clients find the cluster through any one of them."""
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(n.sasl_bootstrap for n in self.nodes)

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def directory(self) -> Path:
        return self.nodes[0].directory.parent

    def node(self, node_id: int) -> BrokerNode:
        for each in self.nodes:
            if each.node_id == node_id:
                return each
        raise StackError(f"the local cluster has no node {node_id}")

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})


def layout(paths: Paths, brokers: int, port_base: int | None = None, name: str = DEFAULT_NAME) -> Cluster:
    """The nodes of a ``brokers``-node cluster under ``<state>/<name>`` (nothing is started);
    another ``name`` and ``port_base`` give a second cluster beside it (a test's own)."""
    if brokers < 2:
        raise StackError("a cluster has at least 3 nodes; the single broker is kafka_broker's")
    if not name.startswith(DEFAULT_NAME):
        raise StackError(f"a cluster's folder name starts with {DEFAULT_NAME!r}, not {name!r}")
    base = c.kafka_port_base(brokers) if port_base is None else port_base
    step = c.KAFKA_NODE_PORT_STEP
    ids = range(1, brokers + 1)
    voters = tuple(f"{i}@{c.KAFKA_HOST}:{base + step * (i - 1) + 1}" for i in ids)
    return Cluster(
        tuple(
            BrokerNode(
                node_id=i,
                port=base + step * (i - 1),
                controller_port=base + step * (i - 1) + 1,
                sasl_port=base + step * (i - 1) + 2,
                directory=paths.state_dir / name / f"node-{i}",
                log_file=paths.logs_dir / f"{name}-node-{i}.log",
                logs_dir=paths.logs_dir,
                voters=voters,
                rack=f"rack-{i}",
                heap=c.KAFKA_CLUSTER_HEAP_OPTS,
            )
            for i in ids
        )
    )


def _nodes_on_disk(paths: Paths) -> list[BrokerNode]:
    """Every node folder of every cluster under the state dir (ports do not matter for
    finding or stopping a node)."""
    found = []
    for folder in sorted(paths.state_dir.glob(f"{DEFAULT_NAME}*/node-*")):
        suffix = folder.name.removeprefix("node-")
        if folder.is_dir() and suffix.isdigit():
            found.append(
                BrokerNode(
                    node_id=int(suffix),
                    port=0,
                    controller_port=0,
                    sasl_port=0,
                    directory=folder,
                    log_file=paths.logs_dir / f"{folder.parent.name}-node-{suffix}.log",
                    logs_dir=paths.logs_dir,
                    voters=("on-disk",),
                )
            )
    return found


def pids(cluster: Cluster) -> dict[int, int]:
    """Node id -> pid of every live node."""
    return {n.node_id: pid for n in cluster.nodes if (pid := node_pid(n)) is not None}


def _cluster_id(paths: Paths, cluster: Cluster) -> str:
    """The id to format new nodes with; refuses a cluster dir formatted for other voters."""
    folder = cluster.directory
    folder.mkdir(parents=True, exist_ok=True)
    voters = ",".join(cluster.nodes[0].voters)
    voters_file, id_file = folder / "voters", folder / "cluster.id"
    any_formatted = any(formatted(n) for n in cluster.nodes)
    if voters_file.is_file() and any_formatted and voters_file.read_text().strip() != voters:
        raise StackError(
            f"The Kafka cluster in {folder} was formatted for other nodes or ports "
            f"({voters_file.read_text().strip()}); run `make down`, remove {folder} and start again."
        )
    voters_file.write_text(voters + "\n")
    if id_file.is_file():
        return id_file.read_text().strip()
    cluster_id = new_cluster_id()
    id_file.write_text(cluster_id + "\n")
    return cluster_id


def ensure_running(
    paths: Paths,
    brokers: int,
    install: bool = True,
    timeout: float = c.KAFKA_CLUSTER_READY_TIMEOUT_S,
    cluster: Cluster | None = None,
) -> Cluster:
    """Reuse the running cluster, or (install jars and) start the nodes that are not running,
    formatting new ones in parallel; return once the cluster lists every node as a live broker.
    ``cluster``: another layout than the stack's own (``layout(..., name=...)``)."""
    cluster = cluster or layout(paths, brokers)
    started = time.monotonic()
    deadline = started + timeout
    running = pids(cluster)
    if len(running) == cluster.size and kafka_answers(cluster.bootstrap, 5.0, brokers=cluster.size):
        log.info("devstack.kafka_cluster_reused", bootstrap=cluster.bootstrap, pids=sorted(running.values()))
        return cluster
    missing = [n for n in cluster.nodes if n.node_id not in running]
    for node in missing:
        check_ports_free(node)
    if missing:
        java = find_java()
        libs = ensure_kafka_jars(paths, install)
        cluster_id = _cluster_id(paths, cluster)
        for node in missing:
            prepare_node(node)
        fresh = [n for n in missing if not formatted(n)]
        with ThreadPoolExecutor(max(1, len(fresh)), thread_name_prefix="kafka-format") as pool:
            list(pool.map(lambda n: format_storage(n, java, libs, cluster_id), fresh))
        for node in missing:
            running[node.node_id] = spawn(node, java, libs)
    try:
        for node in cluster.nodes:
            wait_ports(node, running[node.node_id], deadline)
        wait_metadata(
            cluster.bootstrap,
            cluster.size,
            deadline,
            lambda: all(pid_alive(p) for p in running.values()),
            f"The Kafka cluster (pids {sorted(running.values())})",
            str(paths.logs_dir / f"{cluster.directory.name}-node-*.log"),
        )
    except StackError:
        if missing:
            stop_cluster(cluster)
        raise
    log.info(
        "devstack.kafka_cluster_ready",
        bootstrap=cluster.bootstrap,
        nodes=cluster.size,
        started=[n.node_id for n in missing],
        seconds=round(time.monotonic() - started, 1),
    )
    return cluster


def _stop_all(nodes: list[BrokerNode], timeout: float) -> bool:
    """All at once: one by one, the last node would wait for a controlled shutdown that a
    quorum of one cannot grant. True when any ran."""
    if not nodes:
        return False
    with ThreadPoolExecutor(len(nodes), thread_name_prefix="kafka-stop") as pool:
        return any(list(pool.map(lambda n: stop_node(n, timeout), nodes)))


def stop(paths: Paths, timeout: float = c.STOP_TIMEOUT_S) -> bool:
    """Stop every node of every cluster under the state dir; True when any ran."""
    return _stop_all(_nodes_on_disk(paths), timeout)


def stop_cluster(cluster: Cluster, timeout: float = c.STOP_TIMEOUT_S) -> bool:
    """Stop the nodes of one cluster; True when any ran."""
    return _stop_all(list(cluster.nodes), timeout)


def running_pids(paths: Paths) -> list[int]:
    """Pids of every live node of the cluster dir."""
    return [pid for n in _nodes_on_disk(paths) if (pid := node_pid(n)) is not None]


def status(paths: Paths, brokers: int) -> dict[str, object]:
    cluster = layout(paths, brokers)
    live = pids(cluster)
    return {
        "running": len(live) == cluster.size,
        "pid": None,
        "pids": {str(k): v for k, v in sorted(live.items())},
        "answering": bool(live) and kafka_answers(cluster.bootstrap, 3.0, brokers=cluster.size),
        "bootstrap": cluster.bootstrap,
        "sasl_bootstrap": cluster.sasl_bootstrap,
        "formatted": all(formatted(n) for n in cluster.nodes),
        "log_dir": str(cluster.directory),
        "log_files": str(paths.logs_dir / f"{DEFAULT_NAME}-node-*.log"),
    }


# --- what is done to one node -------------------------------------------------------------------
def kill_node(node: BrokerNode) -> int:
    """``kill -9`` the node (no controlled shutdown, no flush); the pid it had."""
    pid = node_pid(node)
    if pid is None:
        raise StackError(f"{node.label} is not running")
    os.kill(pid, signal.SIGKILL)
    if not wait_for(lambda: not pid_alive(pid), 10.0, 0.05):
        raise StackError(f"{node.label} (pid {pid}) survived SIGKILL")
    node.pid_file.unlink(missing_ok=True)
    return pid


def freeze(node: BrokerNode) -> int:
    """SIGSTOP the node: alive, connections open, answering nothing (a long GC pause)."""
    pid = node_pid(node)
    if pid is None:
        raise StackError(f"{node.label} is not running")
    os.kill(pid, signal.SIGSTOP)
    return pid


def thaw(node: BrokerNode) -> None:
    pid = node_pid(node)
    if pid is not None:
        os.kill(pid, signal.SIGCONT)


def start_node(paths: Paths, cluster: Cluster, node: BrokerNode, timeout: float = 90.0) -> int:
    """Start a stopped (or killed) node again and wait until the cluster lists it as a live
    broker; its pid."""
    deadline = time.monotonic() + timeout
    check_ports_free(node)
    pid = spawn(node, find_java(), ensure_kafka_jars(paths, install=False))
    wait_ports(node, pid, deadline)

    def listed() -> bool:
        try:
            metadata = cluster.admin().list_topics(timeout=3.0)
        except KafkaException:
            return False
        return node.node_id in metadata.brokers

    if not wait_for(listed, max(0.0, deadline - time.monotonic()), 0.25, lambda: not pid_alive(pid)):
        raise StackError(f"{node.label} (pid {pid}) did not rejoin the cluster; read {node.log_file}.")
    return pid


def under_replicated(admin: AdminClient, timeout: float = 10.0) -> list[str]:
    """``topic/partition`` of every partition whose in-sync replicas are fewer than its
    replicas (or that has no leader), internal topics included."""
    metadata = admin.list_topics(timeout=timeout)
    short = []
    for name, topic in metadata.topics.items():
        for pid, part in topic.partitions.items():
            if part.leader < 0 or len(part.isrs) < len(part.replicas):
                short.append(f"{name}/{pid}")
    return sorted(short)


def wait_fully_replicated(cluster: Cluster, timeout: float = 120.0) -> float:
    """Until every partition's replicas are all in sync again; the seconds it took."""
    started = time.monotonic()
    admin = cluster.admin()
    last: list[str] = []

    def done() -> bool:
        nonlocal last
        try:
            last = under_replicated(admin, 5.0)
        except KafkaException:
            return False
        return not last

    if not wait_for(done, timeout, 0.5):
        raise StackError(
            f"{len(last)} partition(s) still under-replicated after {timeout:.0f} s (first: {last[:5]})"
        )
    return time.monotonic() - started


def partition_leaders(admin: AdminClient, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the node id leading it (-1: none)."""
    metadata = admin.list_topics(timeout=10.0)
    out: dict[tuple[str, int], int] = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is None:
            continue
        for pid, part in topic.partitions.items():
            out[(name, pid)] = part.leader
    return out


def active_controller(paths: Paths, cluster: Cluster) -> int:
    """Node id of the active controller (the quorum's leader).

    Not ``AdminClient.describe_cluster()``: a KRaft broker answers DescribeCluster with a
    random live broker as "controller" (clients cannot reach the quorum through a broker).
    Kafka's own ``kafka-metadata-quorum describe --status`` (DescribeQuorum, KIP-595/836),
    which librdkafka lacks, names the leader: it is run from the broker's jars."""
    java = find_java()
    libs = ensure_kafka_jars(paths, install=False)
    cmd = [
        java,
        "-Xmx128m",
        "-XX:TieredStopAtLevel=1",  # a short-lived tool: start fast
        "-cp",
        f"{libs}/*",
        METADATA_QUORUM_TOOL,
        "--bootstrap-server",
        cluster.bootstrap,
        "describe",
        "--status",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_OPTS", "JAVA_TOOL_OPTIONS")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, env=env)
    match = re.search(r"^LeaderId:\s*(\d+)", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(f"kafka-metadata-quorum failed ({last[-1] if last else 'no output'})")
    return int(match.group(1))
