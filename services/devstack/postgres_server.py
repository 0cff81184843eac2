"""The private local PostgreSQL cluster (own data dir, port 15432, loopback only, trust auth)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import structlog
from psycopg import sql

from services.devstack import config as c
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.install import ensure_pg_bindir, ensure_pg_os_user, find_pg_bindir
from services.devstack.procs import pid_alive, port_open, read_pid, run_logged, terminate, wait_for

log = structlog.get_logger()

_INCLUDE_LINE = "include_if_exists = 'optout.conf'  # added by services/devstack"


def _is_root() -> bool:
    return os.geteuid() == 0


def _as_pg_user(cmd: list[str]) -> list[str]:
    """initdb/pg_ctl refuse to run as root: run them as the postgres OS user then."""
    return ["runuser", "-u", c.PG_OS_USER, "--", *cmd] if _is_root() else cmd


def _pg_env() -> dict[str, str]:
    """Our environment minus libpq/server variables that could redirect the tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _quote(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _bindir_for(paths: Paths, install: bool) -> Path:
    """Server binaries; the major version that created the data dir wins when it is there."""
    version_file = paths.pg_data / "PG_VERSION"
    with contextlib.suppress(OSError):
        version = version_file.read_text().strip()
        preferred = Path(f"/usr/lib/postgresql/{version}/bin")
        if (preferred / "postgres").is_file():
            return preferred
    return ensure_pg_bindir(paths, install)


def _postmaster_pid_alive(paths: Paths, pid: int) -> bool:
    return pid_alive(pid, str(paths.pg_data))


def running_pid(paths: Paths) -> int | None:
    """Pid of our live postmaster (from data/postmaster.pid), or None."""
    pid = read_pid(paths.pg_pid_file)
    if pid is not None and _postmaster_pid_alive(paths, pid):
        return pid
    return None


def pg_ready(bindir: Path | None = None, timeout: int = 2) -> bool:
    bindir = bindir or find_pg_bindir()
    if bindir is None:
        return port_open(c.PG_HOST, c.pg_port())
    try:
        result = subprocess.run(
            [
                str(bindir / "pg_isready"),
                "-q",
                "-h",
                c.PG_HOST,
                "-p",
                str(c.pg_port()),
                "-U",
                c.PG_SUPERUSER,
                "-d",
                "postgres",
                "-t",
                str(timeout),
            ],
            env=_pg_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout + 5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _own(path: Path, uid: int, gid: int) -> None:
    if _is_root():
        os.chown(path, uid, gid)


def _prepare_dirs(paths: Paths) -> tuple[int, int]:
    """Create the folders/log file; when root, hand them to the postgres OS user."""
    uid, gid = os.geteuid(), os.getegid()
    if _is_root():
        account = ensure_pg_os_user(paths)
        uid, gid = account.pw_uid, account.pw_gid
    for folder in (paths.state_dir, paths.logs_dir, paths.pg_dir):
        folder.mkdir(parents=True, exist_ok=True)
        if _is_root():  # the postgres user must be able to traverse them
            os.chmod(folder, os.stat(folder).st_mode | 0o055)
    paths.pg_socket_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.pg_socket_dir, 0o755)
    paths.pg_log.touch(exist_ok=True)
    for path in (paths.pg_dir, paths.pg_socket_dir, paths.pg_log):
        _own(path, uid, gid)
    if _is_root():
        run_logged(
            _as_pg_user(["test", "-w", str(paths.pg_dir), "-a", "-w", str(paths.pg_log)]),
            what=(
                f"Checking that the {c.PG_OS_USER} OS user can write {paths.pg_dir} "
                f"(every parent folder needs o+x, or set {c.ENV_STACK_DIR})"
            ),
            log_file=paths.pg_log,
            timeout=30,
        )
    sock = paths.pg_socket_dir / f".s.PGSQL.{c.pg_port()}"
    if len(str(sock).encode()) > 107:
        raise StackError(
            f"The socket path {sock} is too long for a unix socket; set {c.ENV_STACK_DIR} "
            "to a shorter folder."
        )
    return uid, gid


def _initdb_if_needed(paths: Paths, bindir: Path, uid: int, gid: int) -> None:
    if (paths.pg_data / "PG_VERSION").is_file():
        return
    if paths.pg_data.exists() and any(paths.pg_data.iterdir()):
        raise StackError(
            f"{paths.pg_data} is not empty but holds no PostgreSQL cluster; remove it and "
            "run `python -m services.devstack up` again."
        )
    paths.pg_data.mkdir(mode=0o700, exist_ok=True)
    _own(paths.pg_data, uid, gid)
    log.info("devstack.postgres_initdb", data_dir=str(paths.pg_data), bindir=str(bindir))
    run_logged(
        _as_pg_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(paths.pg_data),
                "-U",
                c.PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ]
        ),
        what="initdb",
        log_file=paths.pg_log,
        timeout=180,
        env=_pg_env(),
        cwd=paths.pg_dir,
    )


def _write_config(paths: Paths, uid: int, gid: int) -> None:
    settings = {
        "listen_addresses": _quote(c.PG_HOST),
        "port": c.pg_port(),
        "unix_socket_directories": _quote(paths.pg_socket_dir),
        "max_connections": 200,
        # PostgreSQL's own default (128MB) is sized to start anywhere, not to serve: the
        # docs suggest 25% of the machine's memory for a dedicated server
        # (https://www.postgresql.org/docs/15/runtime-config-resource.html#GUC-SHARED-BUFFERS).
        # 2GB of this 24 GiB machine holds a 1,000,000-suppression replay's state, sealed list
        # and audit indexes; with 128MB most of their reads and index inserts were buffer
        # misses (bench-replay 1M: 63,095 -> 73,434-76,649 commands/s, PostgreSQL 15.2 ->
        # 11.7-12.6 us a command, 2026-12-02). Fewer checkpoints under bulk writes (each
        # one makes the next change of every page log a full page image):
        # https://www.postgresql.org/docs/15/wal-configuration.html
        "shared_buffers": _quote("2GB"),
        "max_wal_size": _quote("8GB"),
        "checkpoint_timeout": _quote("15min"),
        # Time and rows per normalized statement, for `make bench-e2e`'s database profile
        # (benchmarks/costs.py): https://www.postgresql.org/docs/15/pgstatstatements.html
        "shared_preload_libraries": _quote("pg_stat_statements"),
        # Statements only: a utility statement is kept with its text as sent (ALTER ROLE ...
        # PASSWORD '...'), where a statement's constants are kept as $n.
        "pg_stat_statements.track_utility": "off",
        # Durability is under test: keep every safety on.
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "logging_collector": "off",
        "log_line_prefix": _quote("%m [%p] %q%u@%d "),
        "log_timezone": _quote("UTC"),
        "timezone": _quote("UTC"),
    }
    conf = paths.pg_data / "optout.conf"
    conf.write_text(
        "# Written by services/devstack on every start; edits here are overwritten.\n"
        + "".join(f"{key} = {value}\n" for key, value in settings.items())
    )
    hba = paths.pg_data / "pg_hba.conf"
    hba.write_text(
        "# Written by services/devstack: private dev cluster on loopback, trust auth.\n"
        "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
        "local   all       all                 trust\n"
        "host    all       all   127.0.0.1/32  trust\n"
    )
    main_conf = paths.pg_data / "postgresql.conf"
    text = main_conf.read_text()
    if _INCLUDE_LINE not in text:
        main_conf.write_text(text.rstrip("\n") + "\n\n" + _INCLUDE_LINE + "\n")
    for path in (conf, hba, main_conf):
        os.chmod(path, 0o600)
        _own(path, uid, gid)


def _clear_stale_lock_files(paths: Paths) -> None:
    """A postmaster.pid whose process is gone (or is now something else) blocks startup."""
    if paths.pg_pid_file.exists():
        log.info("devstack.postgres_stale_pid_file", pid_file=str(paths.pg_pid_file))
        paths.pg_pid_file.unlink(missing_ok=True)
    (paths.pg_socket_dir / f".s.PGSQL.{c.pg_port()}.lock").unlink(missing_ok=True)


def bootstrap_roles() -> None:
    """Idempotently create optout_admin (owner of database optout) and optout_app (DML only)."""
    roles = ((c.PG_ADMIN_USER, c.PG_ADMIN_PASSWORD), (c.PG_APP_USER, c.PG_APP_PASSWORD))
    with psycopg.connect(c.local_superuser_database_url(), autocommit=True, connect_timeout=10) as conn:
        for role, password in roles:
            exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
            conn.execute(
                sql.SQL(
                    "{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    "NOBYPASSRLS PASSWORD {}"
                ).format(
                    sql.SQL("ALTER" if exists else "CREATE"),
                    sql.Identifier(role),
                    sql.Literal(password),
                )
            )
            if not exists:
                log.info("devstack.postgres_role_created", role=role)
        # Its view, in the superuser's database (the statistics cover every database).
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        owner = conn.execute(
            "select pg_get_userbyid(datdba) from pg_database where datname = %s", (c.PG_DATABASE,)
        ).fetchone()
        if owner is None:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(c.PG_DATABASE), sql.Identifier(c.PG_ADMIN_USER)
                )
            )
            log.info("devstack.postgres_database_created", database=c.PG_DATABASE)
        elif owner[0] != c.PG_ADMIN_USER:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(c.PG_DATABASE), sql.Identifier(c.PG_ADMIN_USER)
                )
            )
    db_url = c.local_superuser_database_url(c.PG_DATABASE)
    with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as conn:
        # PG 15 defaults, stated explicitly: only the database owner (optout_admin, via
        # pg_database_owner) may create objects in schema public or new schemas; optout_app
        # can connect and use the schema and gets its DML grants from the migrations.
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(
            sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(sql.Identifier(c.PG_DATABASE))
        )
        conn.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(c.PG_DATABASE), sql.Identifier(c.PG_APP_USER)
            )
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(c.PG_APP_USER)))


def ensure_running(paths: Paths, install: bool = True, timeout: float = c.PG_READY_TIMEOUT_S) -> None:
    """Reuse our running cluster, or (install, initdb and) start it; then ensure roles/db."""
    logfile = paths.relative(paths.pg_log)
    pid = running_pid(paths)
    if pid is not None:
        bindir = _bindir_for(paths, install=False) if find_pg_bindir() else None
        if not wait_for(lambda: pg_ready(bindir), timeout, 0.25, lambda: running_pid(paths) is None):
            raise StackError(
                f"PostgreSQL (pid {pid}) is running but does not accept connections on "
                f"{c.PG_HOST}:{c.pg_port()}; read {logfile}."
            )
        log.info("devstack.postgres_reused", pid=pid, port=c.pg_port())
    else:
        if port_open(c.PG_HOST, c.pg_port()):
            raise StackError(
                f"Port {c.PG_HOST}:{c.pg_port()} is already used by a process devstack did not "
                f"start; stop it, or set {c.ENV_DATABASE_URL} to use an existing server."
            )
        bindir = _bindir_for(paths, install)
        uid, gid = _prepare_dirs(paths)
        _initdb_if_needed(paths, bindir, uid, gid)
        _write_config(paths, uid, gid)
        _clear_stale_lock_files(paths)
        started = time.monotonic()
        log.info("devstack.postgres_starting", port=c.pg_port(), log_file=str(paths.pg_log))
        run_logged(
            _as_pg_user(
                [
                    str(bindir / "pg_ctl"),
                    "start",
                    "-D",
                    str(paths.pg_data),
                    "-l",
                    str(paths.pg_log),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "-s",
                ]
            ),
            what="pg_ctl start",
            log_file=paths.pg_log,
            timeout=timeout + 15,
            env=_pg_env(),
            cwd=paths.pg_dir,
        )
        if not wait_for(lambda: pg_ready(bindir), timeout, 0.25):
            raise StackError(
                f"PostgreSQL started but pg_isready -h {c.PG_HOST} -p {c.pg_port()} never "
                f"succeeded; read {logfile}."
            )
        log.info(
            "devstack.postgres_ready",
            pid=running_pid(paths),
            seconds=round(time.monotonic() - started, 1),
        )
    try:
        bootstrap_roles()
    except psycopg.Error as exc:
        raise StackError(
            f"Creating the optout roles/database failed ({str(exc).strip().splitlines()[0]}); read {logfile}."
        ) from exc


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
    return kids


def stop(paths: Paths, timeout: float = c.STOP_TIMEOUT_S) -> bool:
    """`pg_ctl stop -m fast`; escalate to immediate, then SIGKILL. True if it was running."""
    pid = running_pid(paths)
    if pid is None:
        return False
    log.info("devstack.postgres_stopping", pid=pid)
    bindir = _bindir_for(paths, install=False) if find_pg_bindir() else None
    for mode in ("fast", "immediate"):
        if bindir is None:
            break
        try:
            run_logged(
                _as_pg_user(
                    [
                        str(bindir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(paths.pg_data),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        str(int(timeout)),
                        "-s",
                    ]
                ),
                what=f"pg_ctl stop -m {mode}",
                log_file=paths.pg_log,
                timeout=timeout + 15,
                env=_pg_env(),
            )
        except StackError as exc:
            log.warning("devstack.postgres_stop_failed", mode=mode, error=str(exc))
        if wait_for(lambda: not pid_alive(pid), 5.0, 0.1):
            return True
    kids = _children(pid)
    terminate(pid, 5.0)
    for kid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(kid, signal.SIGKILL)
    return True


def status(paths: Paths) -> dict[str, object]:
    pid = running_pid(paths)
    return {
        "running": pid is not None,
        "pid": pid,
        "answering": pid is not None and pg_ready(),
        "port": c.pg_port(),
        "initialized": (paths.pg_data / "PG_VERSION").is_file(),
        "data_dir": str(paths.pg_data),
        "socket_dir": str(paths.pg_socket_dir),
        "log_file": str(paths.pg_log),
        "binaries": str(find_pg_bindir() or "not installed"),
    }
