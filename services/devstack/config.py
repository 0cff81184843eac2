"""Fixed addresses, credentials and on-disk layout of the local dev stack.

Everything the broker and the database server write lives under one state directory:
``OPTOUT_STACK_DIR`` when set, else ``<repo>/.run``; but when we are root and the PostgreSQL
OS user cannot reach ``<repo>/.run`` (a clone under /root or in a ``mktemp -d`` folder, which
other users cannot enter), ``/var/tmp/optout-<hash of the repo path>`` instead: the same
folder for the same checkout every time, so ``down`` and ``env`` find it again::

    .run/
      kafka/      server.properties, log4j2.properties, kafka.pid, data/ (KRaft log dir)
      kafka-cluster/  with OPTOUT_DEVSTACK_BROKERS=3: cluster.id, voters, node-1/ node-2/
                  node-3/ (each laid out like kafka/)
      postgres/   data/ (PGDATA, holds postmaster.pid), socket/ (unix socket)
      pgbouncer/  with OPTOUT_DEVSTACK_PGBOUNCER=1: pgbouncer.ini, userlist.txt, pgbouncer.pid
      logs/       kafka.log, kafka-cluster-node-N.log, postgres.log, pgbouncer.log
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from services.devstack.errors import StackError

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

# A replicated cluster (OPTOUT_DEVSTACK_BROKERS=3): every node is broker and controller (KRaft
# combined mode, a static quorum of all nodes), its own JVM with a small heap. Node i (from 1)
# listens on base + 10*(i-1) + 0 (PLAINTEXT), + 1 (CONTROLLER), + 2 (SASL_PLAINTEXT); the
# default base keeps it clear of the single broker's ports, so both can run side by side.
KAFKA_CLUSTER_PORT_BASE = 19192
KAFKA_NODE_PORT_STEP = 10
KAFKA_CLUSTER_HEAP_OPTS = ("-Xms192m", "-Xmx384m")
KAFKA_CLUSTER_READY_TIMEOUT_S = 90.0
BROKER_COUNTS = (1, 3, 5)  # an odd number of voters; 1 is the single broker

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


# --- Environment variables ------------------------------------------------------------------
ENV_KAFKA_BOOTSTRAP = "OPTOUT_KAFKA_BOOTSTRAP"
ENV_DATABASE_URL = "OPTOUT_DATABASE_URL"
ENV_ADMIN_DATABASE_URL = "OPTOUT_ADMIN_DATABASE_URL"
ENV_STACK_DIR = "OPTOUT_STACK_DIR"
ENV_KAFKA_LIBS = "OPTOUT_KAFKA_LIBS"
ENV_BROKERS = "OPTOUT_DEVSTACK_BROKERS"  # 1 (default), 3 or 5 Kafka nodes
ENV_KAFKA_PORT_BASE = "OPTOUT_DEVSTACK_KAFKA_PORT_BASE"  # first port of the (first) Kafka node
ENV_PG_PORT = "OPTOUT_DEVSTACK_PG_PORT"  # PostgreSQL's port (default 15432)
ENV_PGBOUNCER = "OPTOUT_DEVSTACK_PGBOUNCER"  # 1: PgBouncer in front of PostgreSQL for the services
ENV_PGBOUNCER_PORT = "OPTOUT_DEVSTACK_PGBOUNCER_PORT"
PGBOUNCER_PORT = 16432

STOP_TIMEOUT_S = 30.0

# Where the state goes when the checkout is out of the PostgreSQL OS user's reach.
FALLBACK_PARENT = Path("/var/tmp")


def broker_count() -> int:
    """How many Kafka nodes the local stack runs (OPTOUT_DEVSTACK_BROKERS, default 1)."""
    raw = os.environ.get(ENV_BROKERS, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) not in BROKER_COUNTS:
        allowed = ", ".join(str(n) for n in BROKER_COUNTS)
        raise StackError(
            f"{ENV_BROKERS} must be one of {allowed} (an odd number of KRaft voters), not {raw!r}."
        )
    return int(raw)


def port_setting(name: str, default: int, span: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535 - span:
        raise StackError(f"{name} must be a port number from 1024 to {65535 - span}, not {raw!r}.")
    return int(raw)


def kafka_port_base(brokers: int) -> int:
    """The first port of Kafka node 1: OPTOUT_DEVSTACK_KAFKA_PORT_BASE, else 19092 for the
    single broker and 19192 for a cluster."""
    default = KAFKA_PORT if brokers == 1 else KAFKA_CLUSTER_PORT_BASE
    return port_setting(ENV_KAFKA_PORT_BASE, default, KAFKA_NODE_PORT_STEP * brokers)


def pg_port() -> int:
    """PostgreSQL's port: OPTOUT_DEVSTACK_PG_PORT, else 15432. With OPTOUT_STACK_DIR and
    OPTOUT_DEVSTACK_KAFKA_PORT_BASE it lets a second stack run beside the first (the short
    fault run of ``make test`` stops and restarts its own broker and database that way)."""
    return port_setting(ENV_PG_PORT, PG_PORT, 0)


def local_database_url() -> str:
    """Our server's database optout as optout_app (DML only)."""
    return f"postgresql://{PG_APP_USER}:{PG_APP_PASSWORD}@{PG_HOST}:{pg_port()}/{PG_DATABASE}"


def local_admin_database_url() -> str:
    """Our server's database optout as optout_admin (its owner; runs the migrations)."""
    return f"postgresql://{PG_ADMIN_USER}:{PG_ADMIN_PASSWORD}@{PG_HOST}:{pg_port()}/{PG_DATABASE}"


def local_superuser_database_url(database: str = "postgres") -> str:
    return f"postgresql://{PG_SUPERUSER}@{PG_HOST}:{pg_port()}/{database}"


def pgbouncer_wanted() -> bool:
    """OPTOUT_DEVSTACK_PGBOUNCER: 1/true/yes starts PgBouncer, 0/false/no/empty does not."""
    raw = os.environ.get(ENV_PGBOUNCER, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise StackError(f"{ENV_PGBOUNCER} must be 1 or 0, not {raw!r}.")


def pgbouncer_port() -> int:
    return port_setting(ENV_PGBOUNCER_PORT, PGBOUNCER_PORT, 0)


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


def pg_os_account() -> tuple[int, set[int]] | None:
    """(uid, group ids) of the PostgreSQL OS user, or None while it does not exist yet."""
    try:
        account = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        return None
    groups = {account.pw_gid}
    try:
        groups.update(os.getgrouplist(PG_OS_USER, account.pw_gid))
    except OSError:
        groups.update(g.gr_gid for g in grp.getgrall() if PG_OS_USER in g.gr_mem)
    return account.pw_uid, groups


def reachable_by(path: Path, uid: int | None, gids: Collection[int]) -> bool:
    """True when the account (uid, gids) may traverse every existing folder on the way to
    ``path`` (the execute bit of owner, group or other, whichever applies to it). Folders
    that do not exist yet are created by us, open to it."""
    for folder in (path, *path.parents):
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if uid is not None and st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def default_state_dir(
    root: Path,
    euid: int,
    pg_account: tuple[int, set[int]] | None,
    fallback_parent: Path = FALLBACK_PARENT,
) -> Path:
    """``<root>/.run``, unless we are root (PostgreSQL then runs as its own OS user) and that
    user cannot reach it: then a folder of this checkout under ``fallback_parent``."""
    inside = root / ".run"
    if euid != 0:
        return inside
    uid, gids = pg_account if pg_account is not None else (None, set[int]())
    if reachable_by(inside, uid, gids):
        return inside
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return fallback_parent / f"optout-{digest}"


@dataclass(frozen=True)
class Paths:
    root: Path
    state_dir: Path
    kafka_libs: Path
    # Why the state is not where a reader expects it (empty when it is): logged once on `up`.
    state_dir_note: str = ""

    @classmethod
    def from_env(cls) -> Paths:
        root = repo_root()
        libs = Path(os.environ.get(ENV_KAFKA_LIBS) or root / ".cache" / "kafka" / "libs")
        libs = libs.expanduser().resolve()
        if given := os.environ.get(ENV_STACK_DIR):
            return cls(root=root, state_dir=Path(given).expanduser().resolve(), kafka_libs=libs)
        state = default_state_dir(root, os.geteuid(), pg_os_account(), FALLBACK_PARENT)
        note = ""
        if state != root / ".run":
            note = (
                f"the {PG_OS_USER} OS user cannot enter {root} (a parent folder lacks o+x), so the "
                f"stack keeps its state in {state}; set {ENV_STACK_DIR} to choose another folder"
            )
        return cls(root=root, state_dir=state, kafka_libs=libs, state_dir_note=note)

    def prepare_state_dir(self) -> None:
        """Create the state folder; a moved one is created traversable by the server and must
        be a real folder of ours (a symlink or someone else's folder at that name is refused)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        st = self.state_dir.lstat()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise StackError(
                f"{self.state_dir} is not a folder owned by this user; remove it or set "
                f"{ENV_STACK_DIR} to another folder."
            )
        if self.state_dir_note:
            os.chmod(self.state_dir, stat.S_IMODE(st.st_mode) | 0o711)

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
    def kafka_cluster_dir(self) -> Path:
        return self.state_dir / "kafka-cluster"

    @property
    def pgbouncer_dir(self) -> Path:
        return self.state_dir / "pgbouncer"

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
