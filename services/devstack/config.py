"""Fixed addresses, credentials and on-disk layout of the local dev stack.

Everything the broker and the database server write lives under one state directory
(``<repo>/.run`` unless ``OPTOUT_STACK_DIR`` says otherwise)::

    .run/
      kafka/      server.properties, log4j2.properties, kafka.pid, data/ (KRaft log dir)
      postgres/   data/ (PGDATA, holds postmaster.pid), socket/ (unix socket)
      logs/       kafka.log, postgres.log
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# --- Kafka ----------------------------------------------------------------------------------
KAFKA_HOST = "127.0.0.1"
KAFKA_PORT = 19092  # PLAINTEXT client listener
KAFKA_CONTROLLER_PORT = 19093  # KRaft controller listener (not for clients)
KAFKA_SASL_PORT = 19094  # SASL_PLAINTEXT client listener, mechanism PLAIN
KAFKA_SASL_MECHANISM = "PLAIN"
KAFKA_SASL_USERNAME = "optout"
KAFKA_SASL_PASSWORD = "optout-secret"
KAFKA_NODE_ID = 1
KAFKA_MAIN_CLASS = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"
KAFKA_HEAP_OPTS = ("-Xms256m", "-Xmx768m")
KAFKA_READY_TIMEOUT_S = 60.0

LOCAL_KAFKA_BOOTSTRAP = f"{KAFKA_HOST}:{KAFKA_PORT}"
LOCAL_KAFKA_SASL_BOOTSTRAP = f"{KAFKA_HOST}:{KAFKA_SASL_PORT}"

# --- PostgreSQL -----------------------------------------------------------------------------
PG_HOST = "127.0.0.1"
PG_PORT = 15432
PG_DATABASE = "optout"
PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"  # initdb/pg_ctl run as this OS user when we are root
PG_ADMIN_USER = "optout_admin"
PG_ADMIN_PASSWORD = "admin-secret"
PG_APP_USER = "optout_app"
PG_APP_PASSWORD = "app-secret"
PG_READY_TIMEOUT_S = 60.0

LOCAL_DATABASE_URL = f"postgresql://{PG_APP_USER}:{PG_APP_PASSWORD}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
LOCAL_ADMIN_DATABASE_URL = (
    f"postgresql://{PG_ADMIN_USER}:{PG_ADMIN_PASSWORD}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
)
LOCAL_SUPERUSER_DATABASE_URL = f"postgresql://{PG_SUPERUSER}@{PG_HOST}:{PG_PORT}/postgres"

# --- Environment variables ------------------------------------------------------------------
ENV_KAFKA_BOOTSTRAP = "OPTOUT_KAFKA_BOOTSTRAP"
ENV_DATABASE_URL = "OPTOUT_DATABASE_URL"
ENV_ADMIN_DATABASE_URL = "OPTOUT_ADMIN_DATABASE_URL"
ENV_STACK_DIR = "OPTOUT_STACK_DIR"
ENV_KAFKA_LIBS = "OPTOUT_KAFKA_LIBS"

STOP_TIMEOUT_S = 30.0


def repo_root() -> Path:
    """The repository root: two levels above this package, else the nearest parent of cwd
    holding ``deploy/kafka/pom.xml``, else two levels above this package anyway."""
    here = Path(__file__).resolve().parents[2]
    if (here / "deploy" / "kafka" / "pom.xml").is_file():
        return here
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if (candidate / "deploy" / "kafka" / "pom.xml").is_file():
            return candidate
    return here


@dataclass(frozen=True)
class Paths:
    root: Path
    state_dir: Path
    kafka_libs: Path

    @classmethod
    def from_env(cls) -> Paths:
        root = repo_root()
        state = Path(os.environ.get(ENV_STACK_DIR) or root / ".run").expanduser().resolve()
        libs = Path(os.environ.get(ENV_KAFKA_LIBS) or root / ".cache" / "kafka" / "libs")
        return cls(root=root, state_dir=state, kafka_libs=libs.expanduser().resolve())

    # layout ---------------------------------------------------------------------------------
    @property
    def kafka_pom(self) -> Path:
        return self.root / "deploy" / "kafka" / "pom.xml"

    @property
    def kafka_libs_managed(self) -> bool:
        """True when the jar folder is the default one (we may wipe and re-fetch it)."""
        return ENV_KAFKA_LIBS not in os.environ

    @property
    def lock_file(self) -> Path:
        return self.state_dir / ".devstack.lock"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_pid_file(self) -> Path:
        return self.kafka_dir / "kafka.pid"

    @property
    def kafka_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.kafka_dir / "log4j2.properties"

    @property
    def kafka_log(self) -> Path:
        return self.logs_dir / "kafka.log"

    @property
    def pg_dir(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_dir / "socket"

    @property
    def pg_pid_file(self) -> Path:
        return self.pg_data / "postmaster.pid"

    @property
    def pg_log(self) -> Path:
        return self.logs_dir / "postgres.log"

    def relative(self, path: Path) -> str:
        """Path as shown in messages: relative to the repo when inside it."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)
