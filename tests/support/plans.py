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
    other text values, or None) planned for the values (a custom plan) and once for all (the generic
    plan a prepared statement may keep), after ``before`` in the same transaction, on tables
    grown by each ``(table, insert)`` of ``grow`` to 300 rows, analyzed, then to 30,000 (the
    insert takes the first and last row number)."""
    plain = sql.replace("%b", "%s")
    numbered = iter(range(1, 100))
    generic = re.sub(r"%s", lambda _m: f"${next(numbered)}", plain)
    literal = ", ".join("NULL" if p is None else "'" + p.replace("'", "''") + "'" for p in params)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for _table, insert in grow:
            conn.execute(insert, (1, 300))
        for table in sorted({t for t, _ in grow}):
            conn.execute(f"ANALYZE {table}")
        for _table, insert in grow:
            conn.execute(insert, (301, 30_000))
        conn.execute("BEGIN")
        for statement in before:
            conn.execute(statement)
        custom = [str(r[0]) for r in conn.execute("EXPLAIN " + plain, tuple(params))]
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE probe AS {generic}")
        cached = [str(r[0]) for r in conn.execute(f"EXPLAIN EXECUTE probe({literal})")]
        conn.execute("ROLLBACK")
    return ["\n".join(custom), "\n".join(cached)]
