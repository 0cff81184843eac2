"""Fixtures shared by every test: the real Kafka broker and PostgreSQL server (started by
``services.devstack`` or given by OPTOUT_KAFKA_BOOTSTRAP / OPTOUT_DATABASE_URL), a fresh,
migrated database per test (copied from a template migrated once per session, i.e. per
pytest-xdist worker), and a check that no test lets a service log an error it did not declare
(``tests/support/logcapture.py``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from services.common.db import migrate
from tests.support.logcapture import CAPTURE, Capture, ensure_installed
from tests.support.pipeline import delete_isolated_topics


def pytest_configure(config: pytest.Config) -> None:
    ensure_installed()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, ``serial`` tests at least never run alongside each other (one
    worker takes them all); `make test` keeps them out of the parallel pass altogether."""
    for item in items:
        if item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.fixture(autouse=True)
def _no_unexpected_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test when anything logged at level error or above (structlog, stdlib logging,
    the JSON logs of child processes registered with ``CAPTURE.watch``) that the test did
    not declare with ``@pytest.mark.expected_errors(regex, ...)`` or ``expected_errors``."""
    ensure_installed()
    CAPTURE.reset()
    for mark in request.node.iter_markers("expected_errors"):
        CAPTURE.allow(*mark.args)
    yield
    unexpected = CAPTURE.unexpected()
    CAPTURE.reset()
    if unexpected:
        listed = "\n  ".join(e.line() for e in unexpected[:10])
        more = f"\n  ... and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""
        pytest.fail(
            f"{len(unexpected)} unexpected error(s) logged during the test "
            f"(declare provoked ones with @pytest.mark.expected_errors(regex)):\n  {listed}{more}",
            pytrace=False,
        )


@pytest.fixture
def expected_errors() -> Capture:
    """``expected_errors.allow(regex)`` declares errors this test provokes;
    ``expected_errors.seen(regex)`` says whether one was logged."""
    return CAPTURE


@pytest.fixture(autouse=True)
def _delete_test_topics() -> Iterator[None]:
    """The topics a test made with isolated_settings go when it ends (see there)."""
    yield
    delete_isolated_topics()


@pytest.fixture(scope="session")
def stack() -> Any:
    from services.devstack import ensure_up

    return ensure_up()


@pytest.fixture(scope="session")
def database_template(stack: Any) -> Iterator[dict[str, str]]:
    """A migrated database for this test session (per pytest-xdist worker: each worker is a
    session) that ``database`` clones for each test.

    With a local superuser we create ``optout_test_<random>`` owned by the admin role and
    drop it afterwards; against a user-provided database we migrate it in place."""
    superuser = stack.superuser_database_url
    if not superuser:
        migrate(stack.admin_database_url, os.environ.get("OPTOUT_DATABASE_APP_ROLE", "optout_app"))
        yield {"app": stack.database_url, "admin": stack.admin_database_url, "superuser": ""}
        return
    name = f"optout_test_{uuid.uuid4().hex[:8]}"
    _create_database(superuser, name, owner=stack.admin_database_url)
    urls = _urls(stack, superuser, name)
    migrate(urls["admin"], "optout_app")
    yield urls
    _drop_database(superuser, name)


@pytest.fixture
def database(stack: Any, database_template: dict[str, str]) -> Iterator[dict[str, str]]:
    """A fresh, migrated database for this test alone (a copy of the session's template, a few
    milliseconds): services that scan the whole database (the deadline sweeper, the business
    gauges, purge, ``optout overdue``) see only this test's rows, whatever ran before it.
    Against a user-provided database (no superuser) every test shares that one."""
    superuser = stack.superuser_database_url
    if not superuser:
        yield database_template
        return
    name = f"{database_template['name']}_{uuid.uuid4().hex[:8]}"
    _create_database(superuser, name, owner=stack.admin_database_url, template=database_template["name"])
    yield _urls(stack, superuser, name)
    _drop_database(superuser, name)


def _create_database(superuser: str, name: str, owner: str, template: str | None = None) -> None:
    admin_user = psycopg.conninfo.conninfo_to_dict(owner)["user"]
    statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(name), sql.Identifier(str(admin_user))
    )
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(statement)


def _drop_database(superuser: str, name: str) -> None:
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _urls(stack: Any, superuser: str, name: str) -> dict[str, str]:
    return {
        "app": _with_dbname(stack.database_url, name),
        "admin": _with_dbname(stack.admin_database_url, name),
        "superuser": _with_dbname(superuser, name),
        "name": name,
    }


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
