"""The database profile of ``benchmarks/costs.py``: statement labels, deltas, the printed lines."""

from benchmarks.costs import DatabaseWork, Statement, database_work_lines, statement_label

INTAKE_RECORD = """WITH new AS (
    INSERT INTO requests (event_id, state) SELECT e, s FROM unnest($1::text[], $2::text[]) AS t(e, s)
), listed AS (
    INSERT INTO suppression_list AS s (kind, sha256) SELECT t.k, t.h FROM unnest($3::text[]) AS t(k, h)
    ON CONFLICT (kind, sha256) DO UPDATE
    SET updated_at = EXCLUDED.updated_at
)
INSERT INTO destination_status (command_id, event_id) SELECT t.c, t.e FROM unnest($4::text[]) AS t(c, e)"""

CONNECTOR_READ = """WITH t AS (SELECT * FROM unnest($1::text[]) AS t(c))
SELECT a.command_id FROM connector_applied a JOIN t ON t.c = a.command_id
UNION ALL SELECT l.subject FROM connector_latest l"""


def test_a_statement_is_labelled_by_the_tables_it_writes_not_its_ctes_or_upserts():
    assert statement_label(INTAKE_RECORD) == "writes requests, suppression_list, destination_status"
    assert (
        statement_label("UPDATE requests AS r SET state = t.s FROM unnest($1) AS t(s)") == "writes requests"
    )
    assert statement_label("DELETE FROM audit_events WHERE at < $1") == "writes audit_events"


def test_a_read_only_statement_is_labelled_by_the_tables_it_reads():
    assert statement_label(CONNECTOR_READ) == "reads connector_applied, connector_latest"


def test_a_statement_on_no_table_is_labelled_by_its_first_words():
    assert (
        statement_label("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k")
        == ("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[])"[:60])
    )
    assert statement_label("COMMIT") == "COMMIT"
    assert statement_label("") == "(empty)"


def test_the_delta_counts_only_what_the_phase_added():
    before = DatabaseWork(
        {"requests": (10, 5, 0)},
        {1: Statement(4, 2.0, 40, "INSERT INTO requests"), 2: Statement(3, 1.0, 3, "COMMIT")},
    )
    after = DatabaseWork(
        {"requests": (30, 9, 1), "audit_events": (50, 0, 0)},
        {
            1: Statement(6, 5.0, 60, "INSERT INTO requests"),
            2: Statement(3, 1.0, 3, "COMMIT"),  # not called in the phase: left out
            3: Statement(2, 0.5, 2, "SELECT 1"),  # first seen in the phase: whole
        },
    )
    delta = after.minus(before)
    assert delta.rows == {"requests": (20, 4, 1), "audit_events": (50, 0, 0)}
    assert delta.statements == {
        1: Statement(2, 3.0, 20, "INSERT INTO requests"),
        3: Statement(2, 0.5, 2, "SELECT 1"),
    }
    assert DatabaseWork({}, None).minus(before).statements is None


def test_the_lines_rank_tables_by_rows_and_statements_by_time_per_opt_out():
    delta = DatabaseWork(
        {"requests": (100, 100, 0), "audit_events": (500, 0, 0), "idle": (0, 0, 0)},
        {
            1: Statement(20, 4.0, 2000, INTAKE_RECORD),  # 4 ms over 100 opt-outs: 40 µs each
            2: Statement(50, 1.0, 50, "UPDATE requests SET state = $1"),
            3: Statement(10, 2.0, 0, CONNECTOR_READ),
        },
    )
    lines = database_work_lines(delta, events=100, shown=2)
    assert lines[0].endswith("audit_events 5.00/0.00/0.00, requests 1.00/1.00/0.00")  # idle left out
    assert "70 µs per opt-out in all, 800 calls per 1,000 opt-outs" in lines[1]
    assert lines[2].split()[:6] == ["40.0", "µs", "200.0", "calls", "100.0", "rows"]
    assert lines[2].endswith("rows  writes requests, suppression_list, destination_status")
    assert lines[3].split()[:6] == ["20.0", "µs", "100.0", "calls", "0.0", "rows"]
    assert len(lines) == 4  # two shown


def test_without_pg_stat_statements_the_lines_say_how_to_get_it():
    lines = database_work_lines(DatabaseWork({"requests": (3, 0, 0)}, None), events=3)
    assert lines[0].endswith("requests 1.00/0.00/0.00")
    assert "pg_stat_statements is not loaded" in lines[1]
    assert database_work_lines(DatabaseWork({}, None), events=0) == []
