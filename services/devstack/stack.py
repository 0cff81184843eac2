"""Public entry points: bring the local Kafka + PostgreSQL up (or reuse them), stop them, report.

Typical use: ``info = ensure_up()`` (idempotent; starts whatever is not running yet), then
``os.environ.update(info.env())``.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import structlog

from services.devstack import config as c
from services.devstack import kafka_broker, kafka_cluster, pgbouncer_server, postgres_server, sshd_server
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.procs import file_lock, port_open

log = structlog.get_logger()


@dataclass(frozen=True)
class StackInfo:
    kafka_bootstrap: str
    kafka_sasl_bootstrap: str | None  # SASL_PLAINTEXT/PLAIN listener when the broker is ours
    database_url: str  # as optout_app (DML only)
    admin_database_url: str  # as optout_admin (owner of database optout, runs migrations)
    superuser_database_url: str | None  # as postgres, when the server is ours
    started_here: bool  # True when devstack manages (started or reused) a local component
    # Our sshd (the mail house's SFTP server); None when OPTOUT_SFTP_HOST names another one.
    sftp: sshd_server.SftpInfo | None = None
    # Kafka nodes we run: 1 (the single broker), 3 (a replicated cluster), 0 (an external one).
    kafka_brokers: int = 1
    # database_url goes through our PgBouncer in transaction pooling (OPTOUT_DEVSTACK_PGBOUNCER).
    database_pooled: bool = False

    def env(self) -> dict[str, str]:
        replication: dict[str, str] = {}
        if self.kafka_brokers >= 3:
            # What a replicated cluster's topics need: 3 copies, 2 in sync for every write.
            replication = {ENV_REPLICATION_FACTOR: "3", ENV_MIN_INSYNC_REPLICAS: "2"}
        # PgBouncer 1.18 (Debian 12) in transaction pooling cannot carry prepared statements.
        pooled = {ENV_PREPARED_STATEMENTS: "false"} if self.database_pooled else {}
        return {
            c.ENV_KAFKA_BOOTSTRAP: self.kafka_bootstrap,
            **replication,
            c.ENV_DATABASE_URL: self.database_url,
            c.ENV_ADMIN_DATABASE_URL: self.admin_database_url,
            **pooled,
            **(self.sftp.env() if self.sftp is not None else {}),
        }


ENV_REPLICATION_FACTOR = "OPTOUT_TOPIC_REPLICATION_FACTOR"
ENV_MIN_INSYNC_REPLICAS = "OPTOUT_TOPIC_MIN_INSYNC_REPLICAS"
ENV_PREPARED_STATEMENTS = "OPTOUT_DATABASE_PREPARED_STATEMENTS"


@dataclass(frozen=True)
class KafkaTarget:
    bootstrap: str
    sasl_bootstrap: str | None  # when the broker is ours
    brokers: int  # nodes we run; 0 when the broker is external


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _kafka(paths: Paths, install: bool, brokers: int) -> KafkaTarget:
    """Our single broker or our cluster of ``brokers`` nodes, or OPTOUT_KAFKA_BOOTSTRAP's."""
    given = os.environ.get(c.ENV_KAFKA_BOOTSTRAP, "").strip()
    if brokers == 1:
        node = kafka_broker.single_node(paths)
        ours, theirs_on_our_port = (
            node.bootstrap,
            kafka_broker.running_pid(paths) is None and port_open(node.host, node.port),
        )
    else:
        cluster = kafka_cluster.layout(paths, brokers)
        first = cluster.nodes[0]
        ours = cluster.bootstrap
        theirs_on_our_port = not kafka_cluster.pids(cluster) and port_open(first.host, first.port)
    # our own address, but held by a broker we did not start: use it as it is
    external = bool(given) and (given != ours or theirs_on_our_port)
    if external:
        if not kafka_broker.kafka_answers(given, 10.0):
            raise StackError(
                f"{c.ENV_KAFKA_BOOTSTRAP} is set to {given} but no Kafka broker answered there within 10 s."
            )
        log.info("devstack.kafka_external", bootstrap=given)
        return KafkaTarget(given, None, 0)
    if brokers == 1:
        kafka_broker.ensure_running(paths, install)
        return KafkaTarget(node.bootstrap, node.sasl_bootstrap, 1)
    cluster = kafka_cluster.ensure_running(paths, brokers, install)
    return KafkaTarget(cluster.bootstrap, cluster.sasl_bootstrap, cluster.size)


def _postgres(paths: Paths, install: bool) -> tuple[str, str, str | None, bool]:
    """(app url, admin url, superuser url, managed locally)."""
    given = os.environ.get(c.ENV_DATABASE_URL, "").strip()
    external = bool(given) and (
        given != c.local_database_url()
        or (postgres_server.running_pid(paths) is None and port_open(c.PG_HOST, c.pg_port()))
    )
    if external:
        admin = os.environ.get(c.ENV_ADMIN_DATABASE_URL, "").strip() or given
        for url in dict.fromkeys((given, admin)):
            try:
                with psycopg.connect(url, connect_timeout=10) as conn:
                    conn.execute("select 1")
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StackError(
                    f"The database at {_redact(url)} (from {c.ENV_DATABASE_URL}/"
                    f"{c.ENV_ADMIN_DATABASE_URL}) is not reachable: {first}."
                ) from exc
        log.info("devstack.postgres_external", database_url=_redact(given))
        return given, admin, None, False
    postgres_server.ensure_running(paths, install)
    return (
        c.local_database_url(),
        c.local_admin_database_url(),
        c.local_superuser_database_url(),
        True,
    )


def _sftp(paths: Paths, install: bool) -> sshd_server.SftpInfo | None:
    """Our sshd, unless OPTOUT_SFTP_HOST names the mail house's own server (only logged)."""
    given = os.environ.get(sshd_server.ENV_SFTP_HOST, "").strip()
    if given and given != sshd_server.SSHD_HOST:
        log.info("devstack.sftp_external", host=given)
        return None
    return sshd_server.ensure_running(paths, install)


def ensure_up(install: bool = True, brokers: int | None = None) -> StackInfo:
    """Make sure a Kafka broker and a PostgreSQL server are reachable; return their addresses.

    Components named by OPTOUT_KAFKA_BOOTSTRAP / OPTOUT_DATABASE_URL are only checked. The
    rest run locally under the state dir: reused when already running, otherwise started
    (in parallel, detached so they outlive this process). ``install`` allows fetching the
    Kafka jars with Maven and installing PostgreSQL with apt-get when missing. ``brokers``
    (default OPTOUT_DEVSTACK_BROKERS, else 1): 3 runs a replicated cluster of three nodes
    instead of the single broker.
    """
    brokers = c.broker_count() if brokers is None else brokers
    paths = Paths.from_env()
    paths.prepare_state_dir()
    if paths.state_dir_note:
        log.info("devstack.state_dir", state_dir=str(paths.state_dir), note=paths.state_dir_note)
    started = time.monotonic()
    with file_lock(paths.lock_file), ThreadPoolExecutor(3, thread_name_prefix="devstack") as pool:
        kafka_future = pool.submit(_kafka, paths, install, brokers)
        pg_future = pool.submit(_postgres, paths, install)
        sftp_future = pool.submit(_sftp, paths, install)
        errors: list[BaseException] = []
        kafka_result = pg_result = sftp_result = None
        pooled = False
        try:
            kafka_result = kafka_future.result()
        except BaseException as exc:
            errors.append(exc)
        try:
            pg_result = pg_future.result()
        except BaseException as exc:
            errors.append(exc)
        try:
            sftp_result = sftp_future.result()
        except BaseException as exc:
            errors.append(exc)
        if not errors and pg_result is not None and c.pgbouncer_wanted():
            try:
                bouncer = pgbouncer_server.for_stack(paths, pg_result[0])
                pgbouncer_server.ensure_running(paths, bouncer, install)
                pg_result = (bouncer.url(pg_result[0]), *pg_result[1:])
                pooled = True
            except BaseException as exc:
                errors.append(exc)
    if errors:
        for extra in errors[1:]:
            log.error("devstack.up_failed_also", error=str(extra))
        raise errors[0]
    assert kafka_result is not None and pg_result is not None
    kafka_local = kafka_result.brokers > 0
    db_url, admin_url, super_url, pg_local = pg_result
    info = StackInfo(
        kafka_bootstrap=kafka_result.bootstrap,
        kafka_sasl_bootstrap=kafka_result.sasl_bootstrap,
        database_url=db_url,
        admin_database_url=admin_url,
        superuser_database_url=super_url,
        started_here=kafka_local or pg_local or sftp_result is not None,
        sftp=sftp_result,
        kafka_brokers=kafka_result.brokers,
        database_pooled=pooled,
    )
    kafka_log = paths.kafka_log if kafka_result.brokers == 1 else paths.logs_dir / "kafka-cluster-node-*.log"
    log.info(
        "devstack.up",
        kafka_bootstrap=kafka_result.bootstrap,
        kafka_sasl_bootstrap=kafka_result.sasl_bootstrap,
        kafka_brokers=kafka_result.brokers,
        database_url=_redact(db_url),
        pgbouncer=pooled,
        kafka_log=str(kafka_log) if kafka_local else None,
        postgres_log=str(paths.pg_log) if pg_local else None,
        sftp=f"{sftp_result.host}:{sftp_result.port}" if sftp_result else None,
        seconds=round(time.monotonic() - started, 1),
    )
    return info


def _stop_kafka(paths: Paths) -> bool:
    """Our single broker and every node of our cluster, whichever run."""
    single = kafka_broker.stop(paths)
    return kafka_cluster.stop(paths) or single


def down() -> None:
    """Stop our broker(s) and our PostgreSQL (never external ones); no process is left behind."""
    paths = Paths.from_env()
    if not paths.state_dir.is_dir():
        log.info("devstack.down_nothing_to_stop", state_dir=str(paths.state_dir))
        return
    started = time.monotonic()
    with file_lock(paths.lock_file), ThreadPoolExecutor(3, thread_name_prefix="devstack") as pool:
        kafka_future = pool.submit(_stop_kafka, paths)
        pg_future = pool.submit(postgres_server.stop, paths)
        sshd_future = pool.submit(sshd_server.stop, paths)
        pgbouncer_stopped = pgbouncer_server.stop_in(paths)
        kafka_stopped = kafka_future.result()
        pg_stopped = pg_future.result()
        sshd_stopped = sshd_future.result()
    left = [
        name
        for name, alive in (
            ("Kafka", kafka_broker.running_pid(paths) is not None or bool(kafka_cluster.running_pids(paths))),
            ("PostgreSQL", postgres_server.running_pid(paths) is not None),
            ("sshd", sshd_server.running_pid(paths) is not None),
        )
        if alive
    ]
    if left:
        raise StackError(f"{' and '.join(left)} still running after stop; check `ps` and the logs.")
    log.info(
        "devstack.down",
        kafka_stopped=kafka_stopped,
        postgres_stopped=pg_stopped,
        sshd_stopped=sshd_stopped,
        pgbouncer_stopped=pgbouncer_stopped,
        seconds=round(time.monotonic() - started, 1),
    )


def status() -> dict[str, object]:
    """What runs where; cheap (no Kafka client, one pg_isready)."""
    paths = Paths.from_env()
    brokers = c.broker_count()
    kafka = kafka_broker.status(paths) if brokers == 1 else kafka_cluster.status(paths, brokers)
    postgres: dict[str, object] = postgres_server.status(paths)
    if given := os.environ.get(c.ENV_KAFKA_BOOTSTRAP, "").strip():
        kafka["env_override"] = given
    if given := os.environ.get(c.ENV_DATABASE_URL, "").strip():
        postgres["env_override"] = _redact(given)
    sshd: dict[str, object] = sshd_server.status(paths)
    if given := os.environ.get(sshd_server.ENV_SFTP_HOST, "").strip():
        sshd["env_override"] = given
    pgbouncer: dict[str, object] = pgbouncer_server.status(paths)
    return {
        "state_dir": str(paths.state_dir),
        "kafka": kafka,
        "postgres": postgres,
        "sshd": sshd,
        "pgbouncer": pgbouncer,
    }
