"""PostgreSQL reads intake's array literals (services/intake/arrays.py) exactly as it reads
psycopg's own adaptation of the same lists, hostile values included (issue #15)."""

from __future__ import annotations

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
