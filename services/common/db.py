"""PostgreSQL access: connections with retries at the edge, and versioned migrations.

Migrations are the SQL files in ``migrations/`` named ``NNNN_description.sql``,
applied in order, each in its own transaction, recorded in ``schema_migrations``.
A second run changes nothing. They run with the admin role; afterwards the app
role gets DML rights (and nothing else) on every table.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from services.common.errors import ConfigurationError, RetriableError
from services.common.logging import get_logger

log = get_logger(__name__)
R = TypeVar("R")

CONNECT_TIMEOUT_SECONDS = 10

# Transaction-level advisory locks, one per key, taken in the order given (unnest keeps the
# array's order): callers pass ``advisory_keys(...)`` (sorted), so two transactions locking
# overlapping sets take them in the same order and never deadlock. Released at commit or
# rollback, so PgBouncer's transaction pooling keeps them.
ADVISORY_XACT_LOCKS = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k"


def advisory_key(namespace: str, name: str) -> int:
    """Pure: the 64-bit advisory-lock key of ``name`` in ``namespace`` (a hash; two names
    sharing a key only wait for each other)."""
    digest = hashlib.blake2b(f"{namespace}\n{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def advisory_keys(namespace: str, names: Iterable[str]) -> list[int]:
    """Pure: the sorted, distinct keys of ``names`` (the order every caller locks them in)."""
    return sorted({advisory_key(namespace, n) for n in names})


# psycopg prepares a statement on the server once a connection has run it this many times
# (its own default). Behind a transaction-pooling PgBouncer older than 1.21 the next
# transaction may land on another server connection that lacks it, so
# OPTOUT_DATABASE_PREPARED_STATEMENTS=false turns preparing off (prepare_threshold None).
PREPARE_THRESHOLD = 5


def prepare_threshold(prepared_statements: bool) -> int | None:
    return PREPARE_THRESHOLD if prepared_statements else None


def connect(
    dsn: str, autocommit: bool = False, *, prepared_statements: bool = True, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Open one connection; transient failures become ``RetriableError``.
    ``prepared_statements=False``: never prepare statements on the server (see above)."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="optout",
            prepare_threshold=prepare_threshold(prepared_statements),
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        raise RetriableError(f"database unreachable: {first_line(exc)}") from exc


class LazyConnection:
    """One connection, opened on first use and dropped after a connection-level failure,
    so the next use reconnects. ``run`` maps transient database failures to
    ``RetriableError`` (the consume loop retries them with backoff)."""

    def __init__(self, dsn: str, autocommit: bool = False, prepared_statements: bool = True) -> None:
        self._dsn = dsn
        self._autocommit = autocommit
        self._prepared_statements = prepared_statements
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self._dsn, autocommit=self._autocommit, prepared_statements=self._prepared_statements
            )
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def run(self, work: Callable[[psycopg.Connection[Any]], R]) -> R:
        try:
            return work(self.get())
        except psycopg.OperationalError as exc:
            self.close()
            raise RetriableError(f"database error: {first_line(exc)}") from exc
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
            raise RetriableError(f"database conflict: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_database(dsn: str) -> None:
    """Raise ``ConfigurationError`` with one clear line when the database is unusable."""
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"PostgreSQL is not usable ({first_line(exc)}); check OPTOUT_DATABASE_URL or run 'make up'"
        ) from None


def migration_files() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration, in order."""
    folder = resources.files("services.common") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(admin_dsn: str, app_role: str | None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied: list[str] = []
    with connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, body in migration_files():
            with conn.transaction():
                # Serialise concurrent migrators.
                conn.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
                done = conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                ).fetchone()
                if done:
                    continue
                conn.execute(body.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied.append(name)
                log.info("migration applied", migration=name)
        if app_role:
            _grant_dml(conn, app_role)
    return applied


def _grant_dml(conn: psycopg.Connection[Any], role: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        log.warning("application role does not exist; no grants made", role=role)
        return
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
    conn.execute(
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(ident)
    )
    conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))
    conn.execute(sql.SQL("REVOKE ALL ON schema_migrations FROM {}").format(ident))
    conn.execute(sql.SQL("GRANT SELECT ON schema_migrations TO {}").format(ident))
    # The audit trail is append-only: no UPDATE, DELETE or TRUNCATE; ``optout purge`` deletes
    # expired rows through the SECURITY DEFINER function of migration 0015, whose retention
    # floor only the migration owner can change.
    conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {}").format(ident))
    conn.execute(sql.SQL("REVOKE ALL ON audit_retention_floor FROM {}").format(ident))
    conn.execute(sql.SQL("GRANT SELECT ON audit_retention_floor TO {}").format(ident))
    conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION purge_audit_events(integer) TO {}").format(ident))


def require_schema(dsn: str) -> None:
    """Fail with a clear line when migrations have not been applied."""
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            row = conn.execute("SELECT to_regclass('public.requests')").fetchone()
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"PostgreSQL is not usable ({first_line(exc)}); check OPTOUT_DATABASE_URL or run 'make up'"
        ) from None
    if not row or row[0] is None:
        raise ConfigurationError("the database has no optout tables; run 'optout migrate' first")


class AsyncPool:
    """A small async connection pool of an HTTP service (web, inbound, lookup): autocommit,
    opened lazily (``open()`` does not wait for PostgreSQL, so the service starts while the
    database is down), named for ``pg_stat_activity``, and without server-side prepared
    statements when ``prepared_statements`` is False (PgBouncer in transaction pooling)."""

    def __init__(
        self,
        dsn: str,
        application_name: str,
        *,
        min_size: int = 0,
        max_size: int = 4,
        timeout: float = 5.0,
        prepared_statements: bool = True,
    ) -> None:
        self.timeout = timeout
        self.pool: AsyncConnectionPool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": 5,
                "application_name": application_name,
                "prepare_threshold": prepare_threshold(prepared_statements),
            },
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()
