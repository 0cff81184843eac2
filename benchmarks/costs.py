"""What an opt-out costs outside the pipeline's own processes: the broker's and PostgreSQL's
CPU (from /proc) and the database's transactions and WAL (pg_stat_database, pg_stat_wal).

The stack is local (``make up``): the broker is the JVM running ``kafka.Kafka`` (those
started from OPTOUT_STACK_DIR when it is set), PostgreSQL the postmaster of the benchmark's
server and every process it forked. A backend that exits adds its CPU time to the
postmaster's (it reaps it: cutime/cstime), so the sum over the postmaster's own fields and its
live children is a running total that never goes back. Both serve whoever else uses the
stack at the same time: the figures are the machine's, not the benchmark's alone, except
``db_backends`` (the backends connected to the benchmark's own database) and the
database's own transaction counter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def own_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` alone (0 when it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (its reaped children included)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICK


def _pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return -1


def broker_pids() -> list[int]:
    """The local Kafka JVMs (of OPTOUT_STACK_DIR when set)."""
    stack_dir = os.environ.get("OPTOUT_STACK_DIR", "")
    found = []
    for pid in _pids():
        line = _cmdline(pid)
        if "kafka.Kafka" in line and (not stack_dir or stack_dir in line):
            found.append(pid)
    return found


@dataclass
class Infra:
    """Where to read the broker's and PostgreSQL's costs from."""

    superuser_url: str
    database: str
    postmaster: int | None
    brokers: list[int]

    @classmethod
    def find(cls, superuser_url: str, database: str) -> Infra:
        with psycopg.connect(superuser_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            backend = int(row[0]) if row else -1
            postmaster = _ppid(backend)  # while the backend lives (it exits with the connection)
        return cls(superuser_url, database, postmaster if postmaster > 1 else None, broker_pids())


@dataclass(frozen=True)
class InfraSample:
    broker_cpu: float  # s, every broker JVM
    postgres_cpu: float  # s, the postmaster and all its processes (every database)
    db_backends_cpu: float  # s, live backends connected to the benchmark's database
    xact_commit: int  # the benchmark's database
    wal_records: int  # the whole server
    wal_bytes: int
    wal_sync: int  # WAL fsyncs (pg_stat_wal.wal_sync; 0 before PostgreSQL 14)

    def minus(self, before: InfraSample) -> InfraSample:
        return InfraSample(
            self.broker_cpu - before.broker_cpu,
            self.postgres_cpu - before.postgres_cpu,
            self.db_backends_cpu - before.db_backends_cpu,
            self.xact_commit - before.xact_commit,
            self.wal_records - before.wal_records,
            self.wal_bytes - before.wal_bytes,
            self.wal_sync - before.wal_sync,
        )


def sample(infra: Infra, backends: dict[int, float] | None = None) -> InfraSample:
    """The running totals now. ``backends`` (pid -> CPU s at the previous sample) lets
    ``db_backends_cpu`` count the CPU of backends seen before: pass the same dict each time."""
    postgres = 0.0
    if infra.postmaster is not None:
        postgres = tree_cpu_seconds(infra.postmaster) + sum(
            own_cpu_seconds(p) for p in _pids() if _ppid(p) == infra.postmaster
        )
    with psycopg.connect(infra.superuser_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (infra.database,)
        ).fetchone()
        xact = int(row[0]) if row else 0
        pids = [
            int(r[0])
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (infra.database,),
            ).fetchall()
        ]
        try:
            wal = conn.execute("SELECT wal_records, wal_bytes, wal_sync FROM pg_stat_wal").fetchone()
        except psycopg.Error:
            wal = None
    seen = backends if backends is not None else {}
    for pid in pids:
        seen[pid] = own_cpu_seconds(pid) or seen.get(pid, 0.0)
    return InfraSample(
        broker_cpu=sum(tree_cpu_seconds(p) for p in infra.brokers),
        postgres_cpu=postgres,
        db_backends_cpu=sum(seen.values()),
        xact_commit=xact,
        wal_records=int(wal[0]) if wal else 0,
        wal_bytes=int(wal[1]) if wal else 0,
        wal_sync=int(wal[2]) if wal else 0,
    )


def cost_lines(pipeline_cpu: float, delta: InfraSample, events: int, label: str) -> list[str]:
    """What each opt-out cost: CPU ms of the pipeline, the broker and PostgreSQL; database
    transactions and WAL."""
    if events <= 0:
        return [f"cost per opt-out during '{label}': nothing confirmed"]
    per = 1000.0 / events
    total = pipeline_cpu + delta.broker_cpu + delta.postgres_cpu
    return [
        f"cost per opt-out during '{label}' ({events:,} opt-outs): CPU ms: service processes "
        f"{pipeline_cpu * per:.2f}, broker {delta.broker_cpu * per:.2f}, PostgreSQL (all "
        f"processes) {delta.postgres_cpu * per:.2f} (of which backends of this database "
        f"{delta.db_backends_cpu * per:.2f}); total {total * per:.2f}",
        f"  database per opt-out: {delta.xact_commit / events:.2f} transactions committed (this "
        f"database), {delta.wal_records / events:.1f} WAL records, {delta.wal_bytes / events / 1024:.1f} KiB "
        f"WAL, {delta.wal_sync / events:.3f} WAL fsyncs (whole server: shared with other users)",
    ]


# --- PostgreSQL's CPU by client process ------------------------------------------------------
def _socket_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets ``pid`` holds (from its fds and the net tables)."""
    inodes: set[int] = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(fd.path)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and int(parts[9]) in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def backend_cpu_by_client(infra: Infra, clients: dict[str, int]) -> dict[int, tuple[str, float]]:
    """The backends of the benchmark's database whose client is one of ``clients`` (name ->
    pid): backend pid -> (client name, its CPU seconds so far). Matched by the client's TCP
    port (``pg_stat_activity.client_port``) among the sockets the client process holds."""
    owner: dict[int, str] = {}
    for name, pid in clients.items():
        for port in _socket_ports(pid):
            owner[port] = name
    with psycopg.connect(infra.superuser_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (infra.database,),
        ).fetchall()
    return {
        int(pid): (owner[int(port)], own_cpu_seconds(int(pid)))
        for pid, port in rows
        if port is not None and int(port) in owner
    }


def backend_cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each client's backends used between two ``backend_cpu_by_client``."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        start = before.get(pid, (name, 0.0))[1]
        used[name] = used.get(name, 0.0) + max(0.0, seconds - start)
    return used


# --- PostgreSQL's work by table and by statement ---------------------------------------------
# The benchmark's database is fresh for each fleet, so these are its own rows and statements.
# Rows come from pg_stat_user_tables (always there; a backend reports its counts at the end of
# a transaction at most once a second, so an "after" misses at most about a second's rows).
# Statements come from pg_stat_statements when the server preloads it (``make up`` does,
# ``services/devstack/postgres_server.py``) and the extension exists in the database of the
# superuser URL: https://www.postgresql.org/docs/15/pgstatstatements.html
_WRITES = re.compile(r"\b(?:INSERT\s+INTO|(?<!DO\s)UPDATE|DELETE\s+FROM)\s+([A-Za-z_][A-Za-z0-9_]*)", re.I)
_READS = re.compile(r"\bFROM\s+([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()", re.I)
_CTES = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s+AS\s*(?:MATERIALIZED\s*)?\(", re.I)
_NOT_TABLES = frozenset({"unnest", "select", "lateral"})
STATEMENTS_SHOWN = 8


@dataclass(frozen=True)
class Statement:
    calls: int
    exec_ms: float  # total execution time (planning apart)
    rows: int
    query: str  # normalized text (constants are $n)


@dataclass(frozen=True)
class DatabaseWork:
    """Running totals of the benchmark's database: rows by table and, when pg_stat_statements
    is loaded, the statements (by queryid). ``statements`` is None when it is not."""

    rows: dict[str, tuple[int, int, int]]  # table -> (inserted, updated, deleted)
    statements: dict[int, Statement] | None

    def minus(self, before: DatabaseWork) -> DatabaseWork:
        rows = {}
        for table, (ins, upd, dele) in self.rows.items():
            b = before.rows.get(table, (0, 0, 0))
            rows[table] = (ins - b[0], upd - b[1], dele - b[2])
        statements = None
        if self.statements is not None and before.statements is not None:
            statements = {}
            for qid, s in self.statements.items():
                b0 = before.statements.get(qid)
                if b0 is None:
                    statements[qid] = s
                elif s.calls > b0.calls:
                    statements[qid] = Statement(
                        s.calls - b0.calls, s.exec_ms - b0.exec_ms, s.rows - b0.rows, s.query
                    )
        return DatabaseWork(rows, statements)


def statement_label(query: str) -> str:
    """Pure: what a statement does, by the tables it writes (or else reads): ``writes
    requests, destination_status`` / ``reads suppression_state`` / its first word."""
    ctes = {name.lower() for name in _CTES.findall(query)}
    writes = _tables(_WRITES.findall(query), ctes)
    if writes:
        return "writes " + ", ".join(writes)
    reads = _tables(_READS.findall(query), ctes)
    if reads:
        return "reads " + ", ".join(reads)
    words = query.split()
    return " ".join(words[:6])[:60] if words else "(empty)"


def _tables(found: list[str], ctes: set[str]) -> list[str]:
    seen: list[str] = []
    for name in found:
        low = name.lower()
        if low not in _NOT_TABLES and low not in ctes and low not in seen:
            seen.append(low)
    return seen


def database_work(infra: Infra) -> DatabaseWork:
    """The running totals now (see ``DatabaseWork``)."""
    own = psycopg.conninfo.make_conninfo(infra.superuser_url, dbname=infra.database)
    with psycopg.connect(own, autocommit=True) as conn:
        rows = {
            str(name): (int(ins), int(upd), int(dele))
            for name, ins, upd, dele in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
            ).fetchall()
        }
    statements: dict[int, Statement] | None
    with psycopg.connect(infra.superuser_url, autocommit=True) as conn:
        try:
            statements = {
                int(qid): Statement(int(calls), float(ms), int(n), str(query))
                for qid, calls, ms, n, query in conn.execute(
                    "SELECT queryid, calls, total_exec_time, rows, query FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s) AND queryid IS NOT NULL",
                    (infra.database,),
                ).fetchall()
            }
        except psycopg.Error:  # not preloaded, or no extension in this database
            statements = None
    return DatabaseWork(rows, statements)


def database_work_lines(delta: DatabaseWork, events: int, shown: int = STATEMENTS_SHOWN) -> list[str]:
    """Pure: rows written per opt-out by table, then the statements that took the most
    execution time (µs per opt-out, calls per 1,000 opt-outs, rows per call, what it does)."""
    if events <= 0:
        return []
    written = sorted(
        ((sum(r), t, r) for t, r in delta.rows.items() if sum(r) > 0), key=lambda x: (-x[0], x[1])
    )
    lines = [
        "  rows per opt-out by table (inserted/updated/deleted; pg_stat_user_tables, this database): "
        + (
            ", ".join(
                f"{t} {i / events:.2f}/{u / events:.2f}/{d / events:.2f}" for _, t, (i, u, d) in written
            )
            or "none"
        )
    ]
    if delta.statements is None:
        lines.append(
            "  statements: pg_stat_statements is not loaded on this server "
            "(shared_preload_libraries; `make up` loads it)"
        )
        return lines
    ranked = sorted(delta.statements.values(), key=lambda s: -s.exec_ms)
    total = sum(s.exec_ms for s in ranked)
    lines.append(
        f"  statements by execution time (pg_stat_statements, this database): {total * 1000 / events:.0f} µs "
        f"per opt-out in all, {sum(s.calls for s in ranked) * 1000 / events:,.0f} calls per 1,000 opt-outs; "
        "the most (µs per opt-out, calls per 1,000 opt-outs, rows per call):"
    )
    for s in ranked[:shown]:
        lines.append(
            f"    {s.exec_ms * 1000 / events:6.1f} µs  {s.calls * 1000 / events:6.1f} calls  "
            f"{s.rows / s.calls if s.calls else 0:7.1f} rows  {statement_label(s.query)}"
        )
    return lines
