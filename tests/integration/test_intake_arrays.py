"""PostgreSQL reads intake's array literals (services/intake/arrays.py) exactly as it reads
psycopg's own adaptation of the same lists, hostile values included (issue #15)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.intake.arrays import bool_array, int_array, text_array

HOSTILE = [
    "",
    " ",
    " lead",
    "trail ",
    "a b",
    '"q"',
    "back\\slash",
    "a,b",
    "{x}",
    "}{",
    "NULL",
    "null",
    "nUlL",
    "nullish",
    "x\ty",
    "line\nbreak",
    "cr\r",
    "\v\f",
    "é",
    "日本語",
    "\u00a0nbsp",
    "\u2003",
    "[1:1]={a}",
    "'",
    '\\"',
    "\\",
    '"',
    "ab12ef",
    "5f0c9e1a-0000-4000-8000-000000000000",
]
# PostgreSQL text holds no NUL character, UTF-8 no lone surrogate (either way psycopg refuses it).
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
VALUES = st.lists(st.one_of(st.none(), st.sampled_from(HOSTILE), TEXT), max_size=8)


def test_hostile_values_read_back_as_psycopg_sends_them(database: dict[str, str]) -> None:
    with psycopg.connect(database["app"]) as conn:
        for values in ([*HOSTILE], [None, *HOSTILE, None], [], [None], [""], ["null"], ["a", None, "b"]):
            ours = conn.execute("SELECT %s::text[]", (text_array(values),)).fetchone()
            theirs = conn.execute("SELECT %b::text[]", (values,)).fetchone()
            assert ours == theirs == ([*values],)
        assert conn.execute(
            "SELECT %s::int8[], %s::bool[]", (int_array([1, -2, 3]), bool_array([True, False]))
        ).fetchone() == (
            [1, -2, 3],
            [True, False],
        )


# The database is only read: one for every example is fine.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(VALUES)
def test_generated_values_read_back_as_psycopg_sends_them(
    database: dict[str, str], values: list[str | None]
) -> None:
    with psycopg.connect(database["app"]) as conn:
        literal = text_array(values)
        ours = conn.execute("SELECT %s::text[], cardinality(%s::text[])", (literal, literal)).fetchone()
        theirs = conn.execute("SELECT %b::text[]", (values,)).fetchone()
        assert ours == (values, len(values)) and theirs == (values,)


def test_intake_audit_rows_are_written_as_the_audit_module_writes_them(database: dict[str, str]) -> None:
    from services.common.audit import append
    from services.intake.store import AuditRows, _append_audit

    now = datetime(2026, 12, 1, 15, 0, 0, 123456, tzinfo=UTC)
    rows = AuditRows()
    rows.add("e-1", "recorded", status="OPT_OUT")
    rows.add("e-1", "enriched", detail="directory added 1 email(s), 0 phone(s), 0 postal address(es)")
    rows.add("e-1", "command_sent", "email_provider", None, "5f0c9e1a-0000-4000-8000-000000000000")
    rows.add("e-2", "command_resent", "mail_house", None, 'c-1 issue 2, "quoted" \\ {braces} NULL')
    rows.add("e-3", "superseded", detail="")
    columns = "event_id, at, step, destination, status, detail"
    with psycopg.connect(database["app"]) as conn, conn.cursor() as cur:
        append(cur, rows.events(now))
        expected = cur.execute(f"SELECT {columns} FROM audit_events ORDER BY id").fetchall()
        first = cur.execute("SELECT max(id) FROM audit_events").fetchone()
        _append_audit(cur, rows, now)
        ours = cur.execute(f"SELECT {columns} FROM audit_events WHERE id > %s ORDER BY id", first).fetchall()
    assert ours == expected and len(ours) == 5
