"""The local stack's PgBouncer (issue #14): transaction pooling in front of PostgreSQL for the
services' role, and the settings `devstack env` exports with it. Running the pipeline through
a real PgBouncer is tests/integration/test_pgbouncer.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.devstack import config as c
from services.devstack import pgbouncer_server
from services.devstack.config import Paths
from services.devstack.errors import StackError
from services.devstack.stack import StackInfo

APP = "postgresql://optout_app:app-secret@127.0.0.1:15432/optout"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(root=tmp_path, state_dir=tmp_path / ".run", kafka_libs=tmp_path / "libs")


@pytest.mark.parametrize(
    ("raw", "wanted"), [("", False), ("0", False), ("no", False), ("1", True), ("yes", True)]
)
def test_the_setting_turns_it_on(monkeypatch: pytest.MonkeyPatch, raw: str, wanted: bool) -> None:
    monkeypatch.setenv(c.ENV_PGBOUNCER, raw)
    assert c.pgbouncer_wanted() is wanted


def test_a_bad_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(c.ENV_PGBOUNCER, "maybe")
    with pytest.raises(StackError, match="OPTOUT_DEVSTACK_PGBOUNCER must be 1 or 0"):
        c.pgbouncer_wanted()


def test_transaction_pooling_in_front_of_the_database_server(
    monkeypatch: pytest.MonkeyPatch, paths: Paths
) -> None:
    monkeypatch.delenv(c.ENV_PGBOUNCER_PORT, raising=False)
    bouncer = pgbouncer_server.for_stack(paths, APP)
    assert (bouncer.port, bouncer.server_host, bouncer.server_port) == (16432, "127.0.0.1", 15432)
    assert bouncer.users == (("optout_app", "app-secret"),)
    assert bouncer.url(APP) == "postgresql://optout_app:app-secret@127.0.0.1:16432/optout"
    text = pgbouncer_server.config_text(bouncer, run_as=None)
    lines = set(text.splitlines())
    assert "* = host=127.0.0.1 port=15432" in lines  # every database name, as it is
    assert "pool_mode = transaction" in lines
    assert "auth_type = scram-sha-256" in lines
    assert "listen_port = 16432" in lines
    assert "unix_socket_dir = " in lines
    assert "user = postgres" in pgbouncer_server.config_text(bouncer, run_as="postgres")


def test_its_port_is_a_setting(monkeypatch: pytest.MonkeyPatch, paths: Paths) -> None:
    monkeypatch.setenv(c.ENV_PGBOUNCER_PORT, "26432")
    assert pgbouncer_server.for_stack(paths, APP).port == 26432


def test_a_url_without_a_password_cannot_log_in_through_it(paths: Paths) -> None:
    with pytest.raises(StackError, match="role and password"):
        pgbouncer_server.for_stack(paths, "postgresql://optout_app@127.0.0.1:15432/optout")


def test_the_pooled_environment_turns_prepared_statements_off() -> None:
    info = StackInfo(
        kafka_bootstrap="b",
        kafka_sasl_bootstrap=None,
        database_url="postgresql://optout_app:x@127.0.0.1:16432/optout",
        admin_database_url=APP,
        superuser_database_url=None,
        started_here=True,
        database_pooled=True,
    )
    assert info.env()["OPTOUT_DATABASE_PREPARED_STATEMENTS"] == "false"
    direct = StackInfo(**{**info.__dict__, "database_pooled": False})
    assert "OPTOUT_DATABASE_PREPARED_STATEMENTS" not in direct.env()
