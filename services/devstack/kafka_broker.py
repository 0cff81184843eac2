"""The local single-node Kafka (KRaft, combined broker+controller) run straight from the jars."""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
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


def server_properties(paths: Paths) -> str:
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{c.KAFKA_SASL_USERNAME}" password="{c.KAFKA_SASL_PASSWORD}" '
        f'user_{c.KAFKA_SASL_USERNAME}="{c.KAFKA_SASL_PASSWORD}";'
    )
    h = c.KAFKA_HOST
    props: dict[str, object] = {
        # KRaft combined node; single-voter dynamic quorum (formatted with --standalone), so
        # controller.quorum.bootstrap.servers is set and controller.quorum.voters is NOT.
        "process.roles": "broker,controller",
        "node.id": c.KAFKA_NODE_ID,
        "controller.quorum.bootstrap.servers": f"{h}:{c.KAFKA_CONTROLLER_PORT}",
        "controller.listener.names": "CONTROLLER",
        "listeners": (
            f"PLAINTEXT://{h}:{c.KAFKA_PORT},CONTROLLER://{h}:{c.KAFKA_CONTROLLER_PORT},"
            f"SASL_PLAINTEXT://{h}:{c.KAFKA_SASL_PORT}"
        ),
        "advertised.listeners": (f"PLAINTEXT://{h}:{c.KAFKA_PORT},SASL_PLAINTEXT://{h}:{c.KAFKA_SASL_PORT}"),
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
        ),
        # SASL/PLAIN on the SASL_PLAINTEXT listener: one user, optout / optout-secret.
        "sasl.enabled.mechanisms": c.KAFKA_SASL_MECHANISM,
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms": c.KAFKA_SASL_MECHANISM,
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        # Storage and topic defaults.
        "log.dirs": paths.kafka_data,
        "num.partitions": 3,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,  # also the min ISR of __consumer_offsets
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
    }
    lines = ["# Written by services/devstack on every start; edits here are overwritten."]
    lines += [f"{key}={_prop(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def log4j_properties(paths: Paths) -> str:
    quiet = {  # chatty loggers kept at WARN
        "request": "kafka.request.logger",
        "requestchannel": "kafka.network.RequestChannel$",
        "authorizer": "kafka.authorizer.logger",
        "statechange": "state.change.logger",
        "cleaner": "kafka.log.LogCleaner",
        "clients": "org.apache.kafka.clients",
    }
    lines = [
        "# Written by services/devstack: broker logging goes to logs/kafka.log (50 MB x 3).",
        "status = warn",
        "name = optout-devstack-kafka",
        "appender.file.type = RollingFile",
        "appender.file.name = FILE",
        f"appender.file.fileName = {_prop(paths.kafka_log)}",
        f"appender.file.filePattern = {_prop(paths.kafka_log)}.%i",
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


def _java_cmd(java: str, libs: Path, paths: Paths, heap: tuple[str, ...]) -> list[str]:
    return [
        java,
        *heap,
        *JVM_FLAGS,
        f"-Dlog4j2.configurationFile={paths.kafka_log4j}",
        f"-Dkafka.logs.dir={paths.logs_dir}",
        "-cp",
        f"{libs}/*",
    ]


def kafka_answers(bootstrap: str, timeout: float, extra: dict[str, Any] | None = None) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request within ``timeout`` s."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 0}
    conf.update(extra or {})
    try:
        metadata = AdminClient(conf).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _find_our_broker_pids(paths: Paths) -> list[int]:
    """Live JVMs started with our server.properties (covers a lost pid file)."""
    needle = str(paths.kafka_properties).encode()
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


def running_pid(paths: Paths) -> int | None:
    """Pid of our live broker, or None. Clears a stale pid file; adopts an orphan broker."""
    pid = read_pid(paths.kafka_pid_file)
    if pid is not None and pid_alive(pid, c.KAFKA_MAIN_CLASS):
        return pid
    if pid is not None or paths.kafka_pid_file.exists():
        log.info("devstack.kafka_stale_pid_file", pid=pid, pid_file=str(paths.kafka_pid_file))
        paths.kafka_pid_file.unlink(missing_ok=True)
    orphans = _find_our_broker_pids(paths) if paths.kafka_dir.is_dir() else []
    if orphans:
        paths.kafka_pid_file.write_text(f"{orphans[0]}\n")
        log.info("devstack.kafka_adopted", pid=orphans[0])
        return orphans[0]
    return None


def _wait_ready(paths: Paths, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    logfile = paths.relative(paths.kafka_log)

    def dead() -> bool:
        return not pid_alive(pid)

    def remaining() -> float:
        return max(0.0, deadline - time.monotonic())

    ports = (c.KAFKA_PORT, c.KAFKA_SASL_PORT)
    if not wait_for(lambda: all(port_open(c.KAFKA_HOST, p) for p in ports), remaining(), 0.25, dead):
        if dead():
            raise StackError(f"The Kafka broker (pid {pid}) exited during startup; read {logfile}.")
        raise StackError(
            f"The Kafka broker (pid {pid}) did not open {c.LOCAL_KAFKA_BOOTSTRAP} within "
            f"{timeout:.0f} s; read {logfile}."
        )
    ready = wait_for(
        lambda: kafka_answers(c.LOCAL_KAFKA_BOOTSTRAP, min(3.0, max(0.5, remaining()))),
        remaining(),
        0.25,
        dead,
    )
    if not ready:
        if dead():
            raise StackError(f"The Kafka broker (pid {pid}) exited during startup; read {logfile}.")
        raise StackError(
            f"The Kafka broker (pid {pid}) did not answer metadata requests on "
            f"{c.LOCAL_KAFKA_BOOTSTRAP} within {timeout:.0f} s; read {logfile}."
        )


def _check_ports_free() -> None:
    for port in (c.KAFKA_PORT, c.KAFKA_CONTROLLER_PORT, c.KAFKA_SASL_PORT):
        if port_open(c.KAFKA_HOST, port):
            raise StackError(
                f"Port {c.KAFKA_HOST}:{port} is already used by a process devstack did not "
                f"start; stop it, or set {c.ENV_KAFKA_BOOTSTRAP} to use an existing broker."
            )


def _format_storage_if_needed(paths: Paths, java: str, libs: Path) -> None:
    if (paths.kafka_data / "meta.properties").is_file():
        return
    cluster_id = new_cluster_id()
    log.info("devstack.kafka_format", cluster_id=cluster_id, log_dir=str(paths.kafka_data))
    run_logged(
        [
            *_java_cmd(java, libs, paths, ("-Xmx256m",)),
            c.KAFKA_STORAGE_TOOL,
            "format",
            "-t",
            cluster_id,
            "-c",
            str(paths.kafka_properties),
            "--standalone",
        ],
        what="Formatting the KRaft storage",
        log_file=paths.kafka_log,
        timeout=120,
        cwd=paths.kafka_dir,
    )
    (paths.kafka_dir / "cluster.id").write_text(cluster_id + "\n")


def ensure_running(paths: Paths, install: bool = True, timeout: float = c.KAFKA_READY_TIMEOUT_S) -> None:
    """Reuse our running broker, or (install jars and) start one and wait until it answers."""
    pid = running_pid(paths)
    if pid is not None:
        if kafka_answers(c.LOCAL_KAFKA_BOOTSTRAP, 5.0):
            log.info("devstack.kafka_reused", pid=pid, bootstrap=c.LOCAL_KAFKA_BOOTSTRAP)
            return
        log.info("devstack.kafka_waiting_for_running_broker", pid=pid)
        _wait_ready(paths, pid, timeout)
        return

    _check_ports_free()
    java = find_java()
    libs = ensure_kafka_jars(paths, install)
    for folder in (paths.kafka_dir, paths.kafka_data, paths.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    paths.kafka_properties.write_text(server_properties(paths))
    paths.kafka_log4j.write_text(log4j_properties(paths))
    _format_storage_if_needed(paths, java, libs)

    started = time.monotonic()
    cmd = [*_java_cmd(java, libs, paths, c.KAFKA_HEAP_OPTS), c.KAFKA_MAIN_CLASS, str(paths.kafka_properties)]
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_OPTS", "JAVA_TOOL_OPTIONS")}
    pid = spawn_detached(
        cmd, pid_file=paths.kafka_pid_file, log_file=paths.kafka_log, cwd=paths.kafka_dir, env=env
    )
    log.info(
        "devstack.kafka_starting",
        pid=pid,
        bootstrap=c.LOCAL_KAFKA_BOOTSTRAP,
        sasl_bootstrap=c.LOCAL_KAFKA_SASL_BOOTSTRAP,
        log_file=str(paths.kafka_log),
    )
    try:
        _wait_ready(paths, pid, timeout)
    except StackError:
        stop(paths)
        raise
    log.info("devstack.kafka_ready", pid=pid, seconds=round(time.monotonic() - started, 1))


def stop(paths: Paths, timeout: float = c.STOP_TIMEOUT_S) -> bool:
    """SIGTERM our broker (controlled shutdown), SIGKILL after ``timeout``. True if one ran."""
    pids = set(_find_our_broker_pids(paths)) if paths.kafka_dir.is_dir() else set()
    pid = read_pid(paths.kafka_pid_file)
    if pid is not None and pid_alive(pid, c.KAFKA_MAIN_CLASS):
        pids.add(pid)
    for each in sorted(pids):
        log.info("devstack.kafka_stopping", pid=each)
        terminate(each, timeout, c.KAFKA_MAIN_CLASS)
    paths.kafka_pid_file.unlink(missing_ok=True)
    return bool(pids)


def status(paths: Paths) -> dict[str, object]:
    pid = read_pid(paths.kafka_pid_file)
    alive = pid is not None and pid_alive(pid, c.KAFKA_MAIN_CLASS)
    return {
        "running": alive,
        "pid": pid if alive else None,
        "answering": alive and port_open(c.KAFKA_HOST, c.KAFKA_PORT),
        "bootstrap": c.LOCAL_KAFKA_BOOTSTRAP,
        "sasl_bootstrap": c.LOCAL_KAFKA_SASL_BOOTSTRAP,
        "formatted": (paths.kafka_data / "meta.properties").is_file(),
        "log_dir": str(paths.kafka_data),
        "log_file": str(paths.kafka_log),
    }
