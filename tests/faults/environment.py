"""The whole pipeline as separate processes, set up on the real stack: a fresh migrated
database, the ``OPTOUT_*`` environment every service process gets (a fresh topic prefix,
free ports for the destination stand-ins, the mail-house folder) and the processes of the
pipeline (stand-ins, intake, confirmer, one per connector).

Shared by the fault-injection run (``tests.faults.run_faults``) and the end-to-end
latency benchmark (``benchmarks/bench_e2e.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException
from psycopg import sql

from services.common.db import migrate
from services.common.destinations import load_destinations
from services.common.kafka import make_admin
from services.common.settings import Settings
from services.devstack import StackInfo
from tests.faults.fleet import Fleet
from tests.support.pipeline import free_port, standin_ports_env

APP_ROLE = "optout_app"
CONNECTORS = load_destinations().names  # the faults run uses the shipped destinations file


def with_db(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    return psycopg.conninfo.make_conninfo(url, dbname=name)


def create_database(stack: StackInfo, name: str) -> tuple[str, str]:
    """Create and migrate database ``name``; return its (app, admin) URLs. Without
    superuser access (an external database) migrate the configured one and use it."""
    superuser = stack.superuser_database_url
    if not superuser:
        migrate(stack.admin_database_url, APP_ROLE)
        return stack.database_url, stack.admin_database_url
    admin_user = psycopg.conninfo.conninfo_to_dict(stack.admin_database_url)["user"]
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(str(admin_user))
            )
        )
    app = with_db(stack.database_url, name)
    admin = with_db(stack.admin_database_url, name)
    migrate(admin, APP_ROLE)
    return app, admin


def drop_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with ``settings.topic_prefix`` (a run's fresh
    prefix: its topics only); return the names deleted. A run that leaves its topics behind
    leaves them on whatever broker it was pointed at: on the devstack they piled up to
    thousands of partitions, which the broker keeps serving (retention checks, the log
    cleaner of every compacted topic) while later benchmarks measure it."""
    admin = make_admin(settings)
    prefix = settings.topic_prefix
    ours = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefix)]
    if not prefix or not ours:
        return []
    deleted: list[str] = []
    for topic, future in admin.delete_topics(ours, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            deleted.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
    return deleted


def drop_database(stack: StackInfo, name: str) -> None:
    """Drop database ``name`` if this run created it (needs superuser access)."""
    if stack.superuser_database_url:
        with psycopg.connect(stack.superuser_database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pipeline_env(
    stack: StackInfo,
    app: str,
    admin: str,
    work_dir: Path,
    *,
    standin_failure_rate: float = 0.0,
    rejected_emails: Sequence[str] = (),
    partitions: int = 6,
    batch_size: int = 500,
    batch_timeout_ms: int = 100,
    log_level: str | None = None,
) -> dict[str, str]:
    """The environment of every service process of one run (fresh topic prefix and ports)."""
    esp_port, partners_port = free_port(), free_port()
    base = f"http://127.0.0.1:{partners_port}/partners"
    env = {
        **standin_ports_env(),  # every stand-in on a free port; the two used are set below
        "OPTOUT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "OPTOUT_DATABASE_URL": app,
        "OPTOUT_ADMIN_DATABASE_URL": admin,
        "OPTOUT_TOPIC_PREFIX": f"f{uuid.uuid4().hex[:8]}.",
        "OPTOUT_TOPIC_PARTITIONS": str(partitions),
        "OPTOUT_BATCH_SIZE": str(batch_size),
        "OPTOUT_BATCH_TIMEOUT_MS": str(batch_timeout_ms),
        "OPTOUT_LOG_FORMAT": "json",
        "OPTOUT_METRICS_PORT": "0",
        "OPTOUT_MAIL_HOUSE_DIR": str(work_dir / "mail_house"),
        "OPTOUT_STANDIN_EMAIL_PROVIDER_PORT": str(esp_port),
        "OPTOUT_STANDIN_PARTNERS_PORT": str(partners_port),
        "OPTOUT_EMAIL_PROVIDER_URL": f"http://127.0.0.1:{esp_port}",
        "OPTOUT_PARTNERS": json.dumps(
            [
                {"name": "adnet", "url": f"{base}/adnet", "token": "dev-partner-adnet"},
                {"name": "databroker", "url": f"{base}/databroker", "token": "dev-partner-databroker"},
            ]
        ),
        "OPTOUT_STANDIN_FAILURE_RATE": str(standin_failure_rate),
        "OPTOUT_STANDIN_REJECTED_EMAILS": json.dumps(list(rejected_emails)),
        "OPTOUT_SWEEP_INTERVAL_SECONDS": "5",
        "OPTOUT_REISSUE_BASE_SECONDS": "120",
    }
    # On a replicated cluster: its topics' replication factor and min ISR.
    env.update({k: v for k, v in stack.env().items() if k.startswith("OPTOUT_TOPIC_")})
    if log_level is not None:
        env["OPTOUT_LOG_LEVEL"] = log_level
    return env


def settings_for(env: dict[str, str]) -> Settings:
    """The ``Settings`` the services of ``env`` see (for publishing and reading topics)."""
    values: dict[str, Any] = {
        "kafka_bootstrap": env["OPTOUT_KAFKA_BOOTSTRAP"],
        "database_url": env["OPTOUT_DATABASE_URL"],
        "admin_database_url": env["OPTOUT_ADMIN_DATABASE_URL"],
        "topic_prefix": env["OPTOUT_TOPIC_PREFIX"],
        "topic_partitions": int(env["OPTOUT_TOPIC_PARTITIONS"]),
        "topic_replication_factor": int(env.get("OPTOUT_TOPIC_REPLICATION_FACTOR", "1")),
    }
    if "OPTOUT_TOPIC_MIN_INSYNC_REPLICAS" in env:
        values["topic_min_insync_replicas"] = int(env["OPTOUT_TOPIC_MIN_INSYNC_REPLICAS"])
    return Settings(**values)


def start_pipeline(fleet: Fleet, intake: int = 1, confirmer: int = 1) -> None:
    """Start the stand-ins, ``intake`` intakes, ``confirmer`` confirmers and every connector."""
    fleet.start("standins", "standins")
    for _ in range(intake):
        fleet.start("intake", "intake")
    for _ in range(confirmer):
        fleet.start("confirmer", "confirmer")
    for name in CONNECTORS:
        fleet.start(f"connector.{name}", "connector", name)
