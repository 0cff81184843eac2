"""Migrations are idempotent; the app role has DML rights but no DDL."""

import psycopg
import pytest

from services.common.db import migrate

pytestmark = pytest.mark.integration


def test_second_migrate_changes_nothing(database):
    assert migrate(database["admin"], "optout_app") == []


def test_app_role_can_write_rows_but_not_change_the_schema(database):
    with psycopg.connect(database["app"]) as conn:
        conn.execute("SELECT count(*) FROM requests")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE sneaky (id int)")
    with psycopg.connect(database["app"]) as conn, pytest.raises(psycopg.Error):
        conn.execute("ALTER TABLE requests ADD COLUMN sneaky int")
