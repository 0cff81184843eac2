"""PgBouncer in front of PostgreSQL (``OPTOUT_DEVSTACK_PGBOUNCER=1``): Debian's ``pgbouncer``
(installed by ``deploy/install-pgbouncer.sh`` when missing), run from its own configuration in
``<state>/pgbouncer`` on 127.0.0.1:16432 (``OPTOUT_DEVSTACK_PGBOUNCER_PORT``), in transaction
pooling. The services' role connects through it; migrations (the admin role) and the
superuser still go straight to PostgreSQL.

    pgbouncer/
      pgbouncer.ini   written on every start
      userlist.txt    the roles that may log in, with their (development) passwords
      pgbouncer.pid

What transaction pooling means for the services (a server connection is theirs for one
transaction only; https://www.pgbouncer.org/features.html):

* prepared statements: PgBouncer before 1.21 (Debian 12 ships 1.18) does not track
  protocol-level prepared statements, so psycopg must not prepare any
  (``OPTOUT_DATABASE_PREPARED_STATEMENTS=false``, which ``devstack env`` exports with it);
  1.21+ can, with ``max_prepared_statements``;
* no session state: no session advisory locks (``pg_advisory_lock``; the services take
  none), no ``SET``, ``LISTEN``, ``WITH HOLD`` cursors or temporary tables that outlive a
  transaction (none used). Row locks with ``FOR UPDATE SKIP LOCKED`` (the confirmer's
  sweeper, ``optout purge``) live inside one transaction and work unchanged; so would
  transaction-level advisory locks (``pg_advisory_xact_lock``) and ``COPY`` (not used).
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import structlog

from services.devstack import config as c
from services.devstack.config import Paths
from services.devstack.errors import StackError
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

PROGRAM_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
READY_TIMEOUT_S = 20.0
PROGRAM_NAME = "pgbouncer"


@dataclass(frozen=True)
class Bouncer:
    """One PgBouncer: where it keeps its files, where it listens, whom it serves."""

    directory: Path
    port: int
    server_host: str
    server_port: int
    users: tuple[tuple[str, str], ...]  # (role, password) that may log in
    log_file: Path
    host: str = c.PG_HOST
    pool_size: int = 20

    @property
    def config(self) -> Path:
        return self.directory / "pgbouncer.ini"

    @property
    def userlist(self) -> Path:
        return self.directory / "userlist.txt"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pgbouncer.pid"

    def url(self, database_url: str) -> str:
        """``database_url`` through this PgBouncer (same role, password and database)."""
        parts = urlsplit(database_url)
        if parts.scheme in ("postgres", "postgresql"):
            userinfo = parts.netloc.rpartition("@")[0]
            netloc = f"{userinfo}@{self.host}:{self.port}" if userinfo else f"{self.host}:{self.port}"
            return urlunsplit(parts._replace(netloc=netloc))
        return psycopg.conninfo.make_conninfo(database_url, host=self.host, port=str(self.port))


def for_stack(paths: Paths, database_url: str, port: int | None = None) -> Bouncer:
    """The stack's PgBouncer in ``<state>/pgbouncer``, in front of ``database_url``'s server,
    letting ``database_url``'s role log in."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    user, password = str(params.get("user") or ""), str(params.get("password") or "")
    if not user or not password:
        raise StackError("PgBouncer needs the database URL's role and password to let it log in.")
    return Bouncer(
        directory=paths.pgbouncer_dir,
        port=c.pgbouncer_port() if port is None else port,
        server_host=str(params.get("host") or c.PG_HOST),
        server_port=int(str(params.get("port") or c.pg_port())),
        users=((user, password),),
        log_file=paths.logs_dir / "pgbouncer.log",
    )


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def config_text(bouncer: Bouncer, run_as: str | None) -> str:
    settings: dict[str, object] = {
        "listen_addr": bouncer.host,
        "listen_port": bouncer.port,
        "unix_socket_dir": "",  # TCP only: no socket in /tmp to collide with another one
        "auth_type": "scram-sha-256",
        "auth_file": bouncer.userlist,
        # A server connection is the client's for one transaction only.
        "pool_mode": "transaction",
        "default_pool_size": bouncer.pool_size,
        "max_client_conn": 1000,
        "server_reset_query": "",  # not used in transaction pooling
        "server_check_query": "select 1",
        "logfile": "",  # stderr, appended to the log file by the launcher
        "pidfile": "",  # the launcher writes the pid file
        "log_connections": 0,
        "log_disconnections": 0,
        "stats_period": 600,
        **({"user": run_as} if run_as else {}),
    }
    lines = [
        "; Written by services/devstack on every start; edits here are overwritten.",
        "[databases]",
        # Any database name goes to the same name on the server (the tests' per-test databases too).
        f"* = host={bouncer.server_host} port={bouncer.server_port}",
        "",
        "[pgbouncer]",
        *(f"{key} = {value}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def find_program() -> str | None:
    found = shutil.which(PROGRAM_NAME)
    if found:
        return found
    return next((p for p in PROGRAM_CANDIDATES if os.access(p, os.X_OK)), None)


def ensure_program(paths: Paths, install: bool, log_file: Path) -> str:
    """The pgbouncer binary; installed with deploy/install-pgbouncer.sh when allowed."""
    program = find_program()
    if program is not None:
        return program
    script = paths.root / "deploy" / "install-pgbouncer.sh"
    if not install or not script.is_file():
        raise StackError("PgBouncer was not found: install it with `apt-get install -y pgbouncer`.")
    log.info("devstack.pgbouncer_install", script=str(script))
    run_logged(["bash", str(script)], what="Installing PgBouncer", log_file=log_file, timeout=900)
    program = find_program()
    if program is None:
        raise StackError(f"{script} ran but pgbouncer is still missing; read {log_file}.")
    return program


def _run_as() -> str | None:
    """PgBouncer refuses to run as root: then it switches to the PostgreSQL OS user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(c.PG_OS_USER)
    except KeyError:
        raise StackError(f"PgBouncer will not run as root and there is no {c.PG_OS_USER} OS user.") from None
    return c.PG_OS_USER


def running_pid(bouncer: Bouncer) -> int | None:
    pid = read_pid(bouncer.pid_file)
    if pid is not None and pid_alive(pid, str(bouncer.config)):
        return pid
    bouncer.pid_file.unlink(missing_ok=True)
    return None


def _answers(bouncer: Bouncer, timeout: int = 3) -> bool:
    user, password = bouncer.users[0]
    url = psycopg.conninfo.make_conninfo(
        host=bouncer.host, port=str(bouncer.port), user=user, password=password, dbname="postgres"
    )
    try:
        with psycopg.connect(url, connect_timeout=timeout, prepare_threshold=None) as conn:
            conn.execute("select 1")
    except psycopg.Error:
        return False
    return True


def ensure_running(paths: Paths, bouncer: Bouncer, install: bool = True) -> int:
    """Reuse this PgBouncer or start it; its pid, once a login through it works."""
    pid = running_pid(bouncer)
    if pid is not None:
        bouncer.config.write_text(config_text(bouncer, _run_as()))  # the same unless settings changed
        log.info("devstack.pgbouncer_reused", pid=pid, port=bouncer.port)
        return pid
    if port_open(bouncer.host, bouncer.port):
        raise StackError(
            f"Port {bouncer.host}:{bouncer.port} is held by a process this stack did not start; stop "
            f"it or set {c.ENV_PGBOUNCER_PORT} to another port."
        )
    bouncer.log_file.parent.mkdir(parents=True, exist_ok=True)
    program = ensure_program(paths, install, bouncer.log_file)
    run_as = _run_as()
    bouncer.directory.mkdir(parents=True, exist_ok=True)
    bouncer.userlist.write_text("".join(f"{_quote(u)} {_quote(p)}\n" for u, p in bouncer.users))
    bouncer.config.write_text(config_text(bouncer, run_as))
    if run_as is not None:  # it re-reads both files as that user on a reload
        account = pwd.getpwnam(run_as)
        for path in (bouncer.directory, bouncer.userlist, bouncer.config):
            os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(bouncer.userlist, 0o600)
    pid = spawn_detached(
        [program, str(bouncer.config)],
        pid_file=bouncer.pid_file,
        log_file=bouncer.log_file,
        cwd=bouncer.directory,
    )
    if not wait_for(lambda: _answers(bouncer), READY_TIMEOUT_S, 0.2, lambda: not pid_alive(pid)):
        terminate(pid, c.STOP_TIMEOUT_S)
        raise StackError(
            f"PgBouncer (pid {pid}) did not let {bouncer.users[0][0]} log in on "
            f"{bouncer.host}:{bouncer.port}; read {bouncer.log_file}."
        )
    log.info("devstack.pgbouncer_started", pid=pid, port=bouncer.port, pool_mode="transaction")
    return pid


def stop(bouncer: Bouncer) -> bool:
    """Stop this PgBouncer (SIGTERM: immediate shutdown); True when one ran."""
    pid = running_pid(bouncer)
    if pid is None:
        return False
    terminate(pid, c.STOP_TIMEOUT_S, str(bouncer.config))
    bouncer.pid_file.unlink(missing_ok=True)
    return True


def stop_in(paths: Paths) -> bool:
    """Stop the stack's PgBouncer, whatever its port (``make down``)."""
    folder = paths.pgbouncer_dir
    pid = read_pid(folder / "pgbouncer.pid")
    if pid is None or not pid_alive(pid, str(folder / "pgbouncer.ini")):
        (folder / "pgbouncer.pid").unlink(missing_ok=True)
        return False
    terminate(pid, c.STOP_TIMEOUT_S, str(folder / "pgbouncer.ini"))
    (folder / "pgbouncer.pid").unlink(missing_ok=True)
    return True


def status(paths: Paths) -> dict[str, object]:
    config = paths.pgbouncer_dir / "pgbouncer.ini"
    pid = read_pid(paths.pgbouncer_dir / "pgbouncer.pid")
    alive = pid is not None and pid_alive(pid, str(config))
    return {
        "running": alive,
        "pid": pid if alive else None,
        "wanted": c.ENV_PGBOUNCER + "=1" if c.pgbouncer_wanted() else "no",
        "port": c.pgbouncer_port(),
        "pool_mode": "transaction",
        "config": str(config),
    }
