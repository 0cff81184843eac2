"""Fixtures shared by integration and e2e tests: the real Kafka broker and PostgreSQL
server (started by ``services.devstack`` or given by OPTOUT_KAFKA_BOOTSTRAP /
OPTOUT_DATABASE_URL), and a fresh, migrated database per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from services.common.db import migrate


@pytest.fixture(scope="session")
def stack() -> Any:
    from services.devstack import ensure_up

    return ensure_up()


@pytest.fixture(scope="session")
def database(stack: Any) -> Iterator[dict[str, str]]:
    """A fresh database for this test session, migrated with the admin role.

    With a local superuser we create ``optout_test_<random>`` owned by the admin role
    and drop it afterwards; against a user-provided database we migrate it in place."""
    superuser = stack.superuser_database_url
    if not superuser:
        migrate(stack.admin_database_url, os.environ.get("OPTOUT_DATABASE_APP_ROLE", "optout_app"))
        yield {"app": stack.database_url, "admin": stack.admin_database_url, "superuser": ""}
        return
    name = f"optout_test_{uuid.uuid4().hex[:8]}"
    admin_user = psycopg.conninfo.conninfo_to_dict(stack.admin_database_url)["user"]
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(str(admin_user))
            )
        )
    urls = {
        "app": _with_dbname(stack.database_url, name),
        "admin": _with_dbname(stack.admin_database_url, name),
        "superuser": _with_dbname(superuser, name),
        "name": name,
    }
    migrate(urls["admin"], "optout_app")
    yield urls
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _with_dbname(url: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)


@pytest.fixture
def base_settings(stack: Any, database: dict[str, str]) -> dict[str, Any]:
    return {
        "kafka_bootstrap": stack.kafka_bootstrap,
        "database_url": database["app"],
        "admin_database_url": database["admin"],
    }
