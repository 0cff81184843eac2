"""A local Kafka node (KRaft, combined broker+controller) run straight from the jars: the
single broker of the default stack, and the building block of ``kafka_cluster``."""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from services.devstack import config as c
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.install import ensure_kafka_jars, find_java
from services.devstack.procs import (
    pid_alive,
    port_open,
    read_pid,
    run_logged,
    spawn_detached,
    terminate,
    wait_for,
)

log = structlog.get_logger()

JVM_FLAGS = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)


def _prop(value: object) -> str:
    """Escape a value for a java.util.Properties file."""
    return str(value).replace("\\", "\\\\")


@dataclass(frozen=True)
class BrokerNode:
    """One local Kafka node (KRaft combined mode: broker and controller in one JVM)."""

    node_id: int
    port: int  # PLAINTEXT client listener
    controller_port: int
    sasl_port: int  # SASL_PLAINTEXT client listener, mechanism PLAIN
    directory: Path  # server.properties, log4j2.properties, kafka.pid, data/
    log_file: Path
    logs_dir: Path
    # ``id@host:port`` of every voter of a static quorum; empty: the single broker, a
    # single-voter dynamic quorum formatted with --standalone.
    voters: tuple[str, ...] = ()
    rack: str | None = None
    heap: tuple[str, ...] = c.KAFKA_HEAP_OPTS
    host: str = c.KAFKA_HOST

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def properties(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.directory / "log4j2.properties"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"{self.host}:{self.sasl_port}"

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.port, self.controller_port, self.sasl_port)

    @property
    def replicas(self) -> int:
        """Replication factor of the internal topics: 3 on a cluster, 1 on the single broker."""
        return max(1, min(3, len(self.voters)))

    @property
    def label(self) -> str:
        return f"Kafka node {self.node_id}" if self.voters else "The Kafka broker"


def single_node(paths: Paths) -> BrokerNode:
    """The single broker of the default stack (``<state>/kafka``, ports 19092-19094)."""
    base = c.kafka_port_base(1)
    return BrokerNode(
        node_id=c.KAFKA_NODE_ID,
        port=base,
        controller_port=base + 1,
        sasl_port=base + 2,
        directory=paths.kafka_dir,
        log_file=paths.kafka_log,
        logs_dir=paths.logs_dir,
    )


def server_properties(node: BrokerNode) -> str:
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{c.KAFKA_SASL_USERNAME}" password="{c.KAFKA_SASL_PASSWORD}" '
        f'user_{c.KAFKA_SASL_USERNAME}="{c.KAFKA_SASL_PASSWORD}";'
    )
    h = node.host
    replicas = node.replicas
    min_isr = max(1, replicas - 1)  # 2 of 3 on a cluster: one node may be down
    quorum: dict[str, object]
    if node.voters:
        # Static quorum of every node (formatted without --standalone).
        quorum = {"controller.quorum.voters": ",".join(node.voters)}
    else:
        # Single-voter dynamic quorum (formatted with --standalone), so
        # controller.quorum.bootstrap.servers is set and controller.quorum.voters is NOT.
        quorum = {"controller.quorum.bootstrap.servers": f"{h}:{node.controller_port}"}
    props: dict[str, object] = {
        # KRaft combined node: broker and controller.
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        **quorum,
        "controller.listener.names": "CONTROLLER",
        "listeners": (
            f"PLAINTEXT://{h}:{node.port},CONTROLLER://{h}:{node.controller_port},"
            f"SASL_PLAINTEXT://{h}:{node.sasl_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{h}:{node.port},SASL_PLAINTEXT://{h}:{node.sasl_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
        ),
        # SASL/PLAIN on the SASL_PLAINTEXT listener: one user, optout / optout-secret.
        "sasl.enabled.mechanisms": c.KAFKA_SASL_MECHANISM,
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms": c.KAFKA_SASL_MECHANISM,
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        # Storage and topic defaults.
        "log.dirs": node.data,
        "num.partitions": 3,
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,  # also the min ISR of __consumer_offsets
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": 0,
    }
    if node.voters:
        props.update(
            {
                # A replica that was not in sync never becomes leader (the default, stated).
                "unclean.leader.election.enable": "false",
                # One rack per node: replicas of a partition land on different racks.
                "broker.rack": node.rack or f"rack-{node.node_id}",
            }
        )
    lines = ["# Written by services/devstack on every start; edits here are overwritten."]
    lines += [f"{key}={_prop(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def log4j_properties(node: BrokerNode) -> str:
    quiet = {  # chatty loggers kept at WARN
        "request": "kafka.request.logger",
        "requestchannel": "kafka.network.RequestChannel$",
        "authorizer": "kafka.authorizer.logger",
        "statechange": "state.change.logger",
        "cleaner": "kafka.log.LogCleaner",
        "clients": "org.apache.kafka.clients",
    }
    lines = [
        f"# Written by services/devstack: broker logging goes to logs/{node.log_file.name} (50 MB x 3).",
        "status = warn",
        "name = optout-devstack-kafka",
        "appender.file.type = RollingFile",
        "appender.file.name = FILE",
        f"appender.file.fileName = {_prop(node.log_file)}",
        f"appender.file.filePattern = {_prop(node.log_file)}.%i",
        "appender.file.append = true",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d{ISO8601}] %p %m (%c)%n",
        "appender.file.policies.type = Policies",
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
        "appender.file.policies.size.size = 50MB",
        "appender.file.strategy.type = DefaultRolloverStrategy",
        "appender.file.strategy.max = 3",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = FILE",
    ]
    for key, name in quiet.items():
        lines += [f"logger.{key}.name = {name}", f"logger.{key}.level = WARN"]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """Random base64-url 16-byte uuid; never starting with '-' (it would parse as an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):
            return cid


def java_cmd(java: str, libs: Path, node: BrokerNode, heap: tuple[str, ...]) -> list[str]:
    return [
        java,
        *heap,
        *JVM_FLAGS,
        f"-Dlog4j2.configurationFile={node.log4j}",
        f"-Dkafka.logs.dir={node.logs_dir}",
        "-cp",
        f"{libs}/*",
    ]


def kafka_answers(
    bootstrap: str, timeout: float, extra: dict[str, Any] | None = None, brokers: int = 1
) -> bool:
    """True when the cluster at ``bootstrap`` answers a metadata request within ``timeout`` s
    listing at least ``brokers`` live brokers."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 0}
    conf.update(extra or {})
    try:
        metadata = AdminClient(conf).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return len(metadata.brokers) >= brokers


def _find_node_pids(node: BrokerNode) -> list[int]:
    """Live JVMs started with this node's server.properties (covers a lost pid file)."""
    needle = str(node.properties).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if c.KAFKA_MAIN_CLASS.encode() in cmdline and needle in cmdline:
                pid = int(entry.name)
                if pid_alive(pid):
                    found.append(pid)
    return found


def node_pid(node: BrokerNode) -> int | None:
    """Pid of the node's live JVM, or None. Clears a stale pid file; adopts an orphan."""
    pid = read_pid(node.pid_file)
    if pid is not None and pid_alive(pid, c.KAFKA_MAIN_CLASS):
        return pid
    if pid is not None or node.pid_file.exists():
        log.info("devstack.kafka_stale_pid_file", pid=pid, pid_file=str(node.pid_file))
        node.pid_file.unlink(missing_ok=True)
    orphans = _find_node_pids(node) if node.directory.is_dir() else []
    if orphans:
        node.pid_file.write_text(f"{orphans[0]}\n")
        log.info("devstack.kafka_adopted", pid=orphans[0], node=node.node_id)
        return orphans[0]
    return None


def wait_ports(node: BrokerNode, pid: int, deadline: float) -> None:
    """Until the node's client listeners accept connections; StackError when it dies or
    ``deadline`` (a monotonic time) passes."""
    logfile = str(node.log_file)

    def dead() -> bool:
        return not pid_alive(pid)

    remaining = max(0.0, deadline - time.monotonic())
    ports = (node.port, node.sasl_port)
    if not wait_for(lambda: all(port_open(node.host, p) for p in ports), remaining, 0.25, dead):
        if dead():
            raise StackError(f"{node.label} (pid {pid}) exited during startup; read {logfile}.")
        raise StackError(
            f"{node.label} (pid {pid}) did not open {node.bootstrap} within the start "
            f"timeout; read {logfile}."
        )


def wait_metadata(
    bootstrap: str, brokers: int, deadline: float, alive: Callable[[], bool], what: str, logfile: str
) -> None:
    """Until ``bootstrap`` answers metadata requests listing ``brokers`` live brokers.
    ``alive()`` is False once a process it waits for has died (StackError then)."""

    def remaining() -> float:
        return max(0.0, deadline - time.monotonic())

    ready = wait_for(
        lambda: kafka_answers(bootstrap, min(3.0, max(0.5, remaining())), brokers=brokers),
        remaining(),
        0.25,
        lambda: not alive(),
    )
    if not ready:
        if not alive():
            raise StackError(f"{what} exited during startup; read {logfile}.")
        raise StackError(
            f"{what} did not answer metadata requests on {bootstrap} with {brokers} live "
            f"broker(s) in time; read {logfile}."
        )


def check_ports_free(node: BrokerNode) -> None:
    for port in node.ports:
        if port_open(node.host, port):
            raise StackError(
                f"Port {node.host}:{port} is already used by a process devstack did not start; "
                f"stop it, set {c.ENV_KAFKA_PORT_BASE} to other ports, or set "
                f"{c.ENV_KAFKA_BOOTSTRAP} to use an existing broker."
            )


def prepare_node(node: BrokerNode) -> None:
    """Create the node's folders and (re)write its configuration files."""
    for folder in (node.directory, node.data, node.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    node.properties.write_text(server_properties(node))
    node.log4j.write_text(log4j_properties(node))


def format_storage(node: BrokerNode, java: str, libs: Path, cluster_id: str) -> None:
    """Format the node's KRaft log dir (a single broker: a one-voter dynamic quorum)."""
    log.info("devstack.kafka_format", cluster_id=cluster_id, log_dir=str(node.data), node=node.node_id)
    run_logged(
        [
            *java_cmd(java, libs, node, ("-Xmx256m",)),
            c.KAFKA_STORAGE_TOOL,
            "format",
            "-t",
            cluster_id,
            "-c",
            str(node.properties),
            *(() if node.voters else ("--standalone",)),
        ],
        what=f"Formatting the KRaft storage of {node.label.lower()}",
        log_file=node.log_file,
        timeout=120,
        cwd=node.directory,
    )


def formatted(node: BrokerNode) -> bool:
    return (node.data / "meta.properties").is_file()


def spawn(node: BrokerNode, java: str, libs: Path) -> int:
    """Start the node's JVM (detached); its pid. The node must be prepared and formatted."""
    cmd = [*java_cmd(java, libs, node, node.heap), c.KAFKA_MAIN_CLASS, str(node.properties)]
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_OPTS", "JAVA_TOOL_OPTIONS")}
    pid = spawn_detached(cmd, pid_file=node.pid_file, log_file=node.log_file, cwd=node.directory, env=env)
    log.info(
        "devstack.kafka_starting",
        pid=pid,
        node=node.node_id,
        bootstrap=node.bootstrap,
        sasl_bootstrap=node.sasl_bootstrap,
        log_file=str(node.log_file),
    )
    return pid


def stop_node(node: BrokerNode, timeout: float = c.STOP_TIMEOUT_S) -> bool:
    """SIGTERM the node (controlled shutdown), SIGKILL after ``timeout``. True if one ran."""
    pids = set(_find_node_pids(node)) if node.directory.is_dir() else set()
    pid = read_pid(node.pid_file)
    if pid is not None and pid_alive(pid, c.KAFKA_MAIN_CLASS):
        pids.add(pid)
    for each in sorted(pids):
        log.info("devstack.kafka_stopping", pid=each, node=node.node_id)
        terminate(each, timeout, c.KAFKA_MAIN_CLASS)
    node.pid_file.unlink(missing_ok=True)
    return bool(pids)


# --- the single broker ----------------------------------------------------------------------------
def running_pid(paths: Paths) -> int | None:
    """Pid of our live single broker, or None. Clears a stale pid file; adopts an orphan."""
    return node_pid(single_node(paths))


def ensure_running(paths: Paths, install: bool = True, timeout: float = c.KAFKA_READY_TIMEOUT_S) -> None:
    """Reuse our running broker, or (install jars and) start one and wait until it answers."""
    node = single_node(paths)
    pid = node_pid(node)
    deadline = time.monotonic() + timeout
    logfile = paths.relative(node.log_file)
    if pid is not None:
        if kafka_answers(node.bootstrap, 5.0):
            log.info("devstack.kafka_reused", pid=pid, bootstrap=node.bootstrap)
            return
        log.info("devstack.kafka_waiting_for_running_broker", pid=pid)
        running = pid
        wait_ports(node, running, deadline)
        wait_metadata(
            node.bootstrap, 1, deadline, lambda: pid_alive(running), f"{node.label} (pid {pid})", logfile
        )
        return

    check_ports_free(node)
    java = find_java()
    libs = ensure_kafka_jars(paths, install)
    prepare_node(node)
    if not formatted(node):
        cluster_id = new_cluster_id()
        format_storage(node, java, libs, cluster_id)
        (node.directory / "cluster.id").write_text(cluster_id + "\n")

    started = time.monotonic()
    pid = spawn(node, java, libs)
    try:
        wait_ports(node, pid, deadline)
        started_pid = pid
        wait_metadata(
            node.bootstrap, 1, deadline, lambda: pid_alive(started_pid), f"{node.label} (pid {pid})", logfile
        )
    except StackError:
        stop(paths)
        raise
    log.info("devstack.kafka_ready", pid=pid, seconds=round(time.monotonic() - started, 1))


def stop(paths: Paths, timeout: float = c.STOP_TIMEOUT_S) -> bool:
    """SIGTERM our single broker (controlled shutdown), SIGKILL after ``timeout``. True if one ran."""
    return stop_node(single_node(paths), timeout)


def status(paths: Paths) -> dict[str, object]:
    node = single_node(paths)
    pid = read_pid(node.pid_file)
    alive = pid is not None and pid_alive(pid, c.KAFKA_MAIN_CLASS)
    return {
        "running": alive,
        "pid": pid if alive else None,
        "answering": alive and port_open(node.host, node.port),
        "bootstrap": node.bootstrap,
        "sasl_bootstrap": node.sasl_bootstrap,
        "formatted": formatted(node),
        "log_dir": str(node.data),
        "log_file": str(node.log_file),
    }
