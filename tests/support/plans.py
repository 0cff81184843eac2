"""The plans PostgreSQL makes for a batch statement on tables that grew since their last
ANALYZE (the plan tests of intake, the connectors and the confirmer: a batch's statements must
probe the primary key per key, never scan or hash a whole table)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import psycopg


def batch_plans(
    admin_dsn: str,
    grow: Sequence[tuple[str, str]],
    sql: str,
    params: Sequence[str | None],
    before: Sequence[str] = (),
) -> list[str]:
    """EXPLAIN of ``sql`` (``%s``/``%b`` placeholders) with ``params`` (array literals and
    other text values, or None) on tables grown by each ``(table, insert)`` of ``grow`` (the
    insert takes the first and last row number) from 300 rows to 30,000, each after
    ``before`` in the same transaction:

    1. planned for the values (a custom plan), with the tables analyzed at 300 rows;
    2. planned once for all (the generic plan a prepared statement may keep), the same;
    3. the generic plan made at 300 rows, analyzed, and kept as the tables grew;
    4. the generic plan made at 300 rows never analyzed (a new database), kept as they grew.

    A prepared statement keeps its generic plan until its tables are analyzed again, and a
    service prepares its statements in its first batches, when a new database is nearly
    empty; autovacuum analyzes a database about once a minute. In a bench-e2e run
    (2026-12-02 12:37 UTC), the confirmer's UPDATE of ``requests`` kept a plan made at a few
    hundred rows that read the whole table once per acknowledged request: its hop's p99 rose
    to 13 s at 500/s and fell back once ``requests`` was analyzed (3 and 4 catch that)."""
    plain = sql.replace("%b", "%s")
    numbered = iter(range(1, 100))
    generic = re.sub(r"%s", lambda _m: f"${next(numbered)}", plain)
    literal = ", ".join("NULL" if p is None else "'" + p.replace("'", "''") + "'" for p in params)
    tables = sorted({t for t, _ in grow})
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for table in tables:  # an ANALYZE of autovacuum's would replace the plans kept (3, 4)
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")

        def explain(statement: str, force_generic: bool = True, args: Sequence[str | None] = ()) -> str:
            conn.execute("BEGIN")
            for setting in before:
                conn.execute(setting)
            if force_generic:
                conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            plan = [str(r[0]) for r in conn.execute(f"EXPLAIN {statement}", tuple(args))]
            conn.execute("ROLLBACK")
            return "\n".join(plan)

        def fill(first: int, last: int) -> None:
            for _table, insert in grow:
                conn.execute(insert, (first, last))

        fill(1, 300)  # never analyzed
        conn.execute(f"PREPARE new_database AS {generic}")
        explain(f"EXECUTE new_database({literal})")  # its generic plan, made and cached now
        fill(301, 30_000)
        kept_unanalyzed = explain(f"EXECUTE new_database({literal})")
        conn.execute("DEALLOCATE new_database")
        conn.execute(f"TRUNCATE {', '.join(tables)} CASCADE")

        fill(1, 300)
        for table in tables:
            conn.execute(f"ANALYZE {table}")
        conn.execute(f"PREPARE early AS {generic}")
        explain(f"EXECUTE early({literal})")
        fill(301, 30_000)
        custom = explain(plain, force_generic=False, args=params)
        conn.execute(f"PREPARE probe AS {generic}")
        cached = explain(f"EXECUTE probe({literal})")
        kept = explain(f"EXECUTE early({literal})")
    return [custom, cached, kept, kept_unanalyzed]
