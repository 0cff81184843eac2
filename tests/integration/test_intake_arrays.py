"""PostgreSQL reads intake's array literals (services/common/arrays.py) exactly as it reads
psycopg's own adaptation of the same lists, hostile values included (issue #15)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.arrays import (
    NULL_FIELD,
    SEPARATOR,
    SPLIT_TEXT,
    bool_array,
    int_array,
    split_text,
    text_array,
)
from tests.support.hostile_text import HOSTILE

# PostgreSQL text holds no NUL character, UTF-8 no lone surrogate (either way psycopg refuses it).
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
VALUES = st.lists(st.one_of(st.none(), st.sampled_from(HOSTILE), TEXT), max_size=8)
# split_text's own control characters, alone and inside values.
CONTROL = [SEPARATOR, NULL_FIELD, f"a{SEPARATOR}b", f"{NULL_FIELD}x", SEPARATOR + NULL_FIELD]
SPLIT_VALUES = st.lists(st.one_of(st.none(), st.sampled_from(HOSTILE + CONTROL), TEXT), max_size=8)


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


def test_split_columns_read_back_as_psycopg_sends_them(database: dict[str, str]) -> None:
    """``SPLIT_TEXT`` reads ``split_text``'s parameters as the values, whichever form it chose."""
    cases = (
        [*HOSTILE],
        [None, *HOSTILE, None],
        [],
        [None],
        [""],
        ["", ""],
        [None, ""],
        ["null", "NULL"],
        ["a", None, "b"],
        CONTROL,
        [None, *CONTROL],
        ["e-1", "e-2"],
    )
    with psycopg.connect(database["app"]) as conn:
        for values in cases:
            ours = conn.execute(f"SELECT {SPLIT_TEXT}", split_text(values)).fetchone()
            assert ours == ([*values],), values
        # Plain values go split, values holding a control character as the literal.
        assert split_text(["e-1", None, ""]) == (None, f"e-1{SEPARATOR}{NULL_FIELD}{SEPARATOR}")
        assert split_text([f"a{SEPARATOR}b"])[1] is None and split_text([""])[1] is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(SPLIT_VALUES)
def test_generated_split_columns_read_back_as_the_values(
    database: dict[str, str], values: list[str | None]
) -> None:
    with psycopg.connect(database["app"]) as conn:
        params = split_text(values)
        row = conn.execute(f"SELECT {SPLIT_TEXT}, cardinality({SPLIT_TEXT})", (*params, *params)).fetchone()
        assert row == (values, len(values))


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


def test_published_states_are_the_codec_bytes_of_the_state_records(base_settings: dict[str, Any]) -> None:
    """What ``publish_current_states`` produces for rows stored out of contract order is what
    the codec writes for ``state_record`` (the table's check admits the concrete scopes only)."""
    from services.common.avro import default_codec
    from services.common.db import LazyConnection
    from services.common.kafka import DeliveryTracker, make_producer
    from services.domain.subjects import ScopeState, state_record
    from services.intake.states import publish_current_states
    from tests.support.pipeline import isolated_settings, read_topic

    cfg = isolated_settings(base_settings)
    at = datetime(2026, 12, 1, 15, 0, 0, 987654, tzinfo=UTC)
    rows = [  # (subject, scope, suppressed, since, event id, action), stored in this order
        ("email_sha256:aa", "SMS_MARKETING", True, at, "e-2", "OPT_OUT"),
        ("email_sha256:aa", "POSTAL_MARKETING", False, at, "e-3", "OPT_IN"),
        ("email_sha256:aa", "EMAIL_MARKETING", True, at - timedelta(days=400), "e-1", "OPT_OUT"),
        ("email_sha256:aa", "THIRD_PARTY_SHARING", False, at, "é-5", "OPT_IN"),
        ("cust:tombstone", "EMAIL_MARKETING", False, at, "e-6", "OPT_IN"),
    ]
    with psycopg.connect(cfg.dsn()) as conn:
        conn.execute(
            "INSERT INTO suppression_state (subject, scope, suppressed, since, event_id, action, updated_at) "
            "SELECT s, sc, su, si, e, a, now() FROM unnest(%s::text[], %s::text[], %s::bool[], "
            "%s::timestamptz[], %s::text[], %s::text[]) AS t(s, sc, su, si, e, a)",
            [list(column) for column in zip(*rows, strict=True)],
        )
    codec = default_codec()
    db = LazyConnection(cfg.dsn(), autocommit=True)
    try:
        tracker = DeliveryTracker(make_producer(cfg))
        subjects = ["email_sha256:aa", "cust:tombstone", "phone_sha256:never"]
        # two subjects per transaction: the slices lock, read and deliver one after another
        assert (
            publish_current_states(
                db, tracker, codec, cfg.suppressions_topic, subjects, at, per_transaction=2
            )
            == 3
        )
    finally:
        db.close()
    published = {r.key.decode(): r.value for r in read_topic(cfg, cfg.suppressions_topic, expect=3) if r.key}
    record = state_record("email_sha256:aa", [ScopeState(*row[1:]) for row in rows[:4]], at)
    assert record is not None
    assert published == {
        "email_sha256:aa": codec.encode("SuppressionState", record),
        "cust:tombstone": None,
        "phone_sha256:never": None,
    }
