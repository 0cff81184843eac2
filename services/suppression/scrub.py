"""Audience scrub: remove suppressed people from a CSV list before it goes to a vendor.

``optout scrub --in audience.csv --out clean.csv [--column email] [--kind ...] [--scope ...]``.

Two passes over the file and one query:

1. read the file, turn each row's identifier into its subject (raw emails and phones are
   normalized and hashed as intake does, ``services/domain/subjects.py``; SHA-256 columns are
   taken as they are) and ``COPY`` (row number, subject) into a temporary table;
2. one join of that table with ``suppression_state`` (suppressed rows, of ``--scope`` or of
   any scope) gives the row numbers to remove and the scopes why;
3. read the file again and write every other row (the header first).

Memory holds only the removed and invalid row numbers. A row whose identifier names nobody
(not an email, say) is kept and counted; ``--drop-invalid`` removes it too.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psycopg

from services.common.contract import CONCRETE_SCOPES, Scope
from services.common.errors import ConfigurationError
from services.domain.subjects import BadIdentifier, IdentifierKind, is_sha256_hex, subject_of

# Column names recognised without --column, in order of preference.
KNOWN_COLUMNS = ("email", "email_sha256", "phone", "phone_sha256", "customer_id")
SAMPLE_ROWS = 100
COPY_CHUNK = 5000

_REMOVED = """
SELECT t.n, array_agg(s.scope ORDER BY s.scope)
FROM scrub_rows t JOIN suppression_state s ON s.subject = t.subject
WHERE s.suppressed AND (%(scope)s::text IS NULL OR s.scope = %(scope)s::text)
GROUP BY t.n
"""

Progress = Callable[[str, int, int], None]  # (phase, done, total): bytes or rows


@dataclass
class Report:
    rows: int = 0
    kept: int = 0
    removed: int = 0
    invalid: int = 0
    invalid_dropped: bool = False
    kind: str = ""
    column: str = ""
    scope: str | None = None
    by_scope: Counter[str] = field(default_factory=Counter)  # removed rows suppressed for a scope
    invalid_reasons: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "removed": self.removed,
            "removed_by_scope": {
                s.value: self.by_scope[s.value] for s in CONCRETE_SCOPES if self.by_scope[s.value]
            },
            "invalid": self.invalid,
            "invalid_reasons": dict(self.invalid_reasons),
            "invalid_dropped": self.invalid_dropped,
            "column": self.column,
            "kind": self.kind,
            "scope": self.scope,
        }

    def lines(self) -> list[str]:
        out = [
            f"rows: {self.rows:,} (column {self.column!r} as {self.kind}; "
            f"scope: {self.scope or 'any scope'})",
            f"kept: {self.kept:,}",
            f"removed: {self.removed:,} suppressed",
        ]
        for scope in CONCRETE_SCOPES:
            if self.by_scope[scope.value]:
                out.append(f"  suppressed for {scope.value}: {self.by_scope[scope.value]:,}")
        if self.invalid:
            fate = "removed" if self.invalid_dropped else "kept"
            reasons = ", ".join(f"{r} {n:,}" for r, n in self.invalid_reasons.most_common())
            out.append(f"not an identifier ({fate}): {self.invalid:,} ({reasons})")
        return out


def choose_column(header: Sequence[str], column: str | None) -> int:
    """The index of ``column`` (case-insensitive), or of the first known identifier column."""
    names = [h.strip().lower() for h in header]
    wanted = [column.strip().lower()] if column else list(KNOWN_COLUMNS)
    for name in wanted:
        if name in names:
            return names.index(name)
    if column:
        raise ConfigurationError(f"the file has no column {column!r} (columns: {', '.join(header)})")
    raise ConfigurationError(
        f"no identifier column found ({', '.join(KNOWN_COLUMNS)}); name one with --column"
    )


def choose_kind(column: str, sample: Iterable[str], kind: str | None) -> IdentifierKind:
    """The identifier kind of a column: ``kind`` if given; else from the column's name, and a
    column of SHA-256 values (64 hex digits; or named ``*sha256*``/``*hash*``) is taken as the
    hash of that kind."""
    if kind:
        try:
            return IdentifierKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in IdentifierKind)
            raise ConfigurationError(f"--kind {kind!r} is not one of {known}") from None
    name = column.strip().lower()
    values = [v.strip() for v in sample if v.strip()]
    hexes = sum(1 for v in values if is_sha256_hex(v))
    # Hashes by name, or when nine sampled values in ten are 64 hex digits (a few bad rows
    # must not turn a column of hashes into one of raw emails).
    hashed = "sha256" in name or "hash" in name or (bool(values) and hexes >= 0.9 * len(values))
    if "phone" in name or "mobile" in name or "msisdn" in name:
        return IdentifierKind.PHONE_SHA256 if hashed else IdentifierKind.PHONE
    if "customer" in name or name in ("id", "cust_id", "customer_id"):
        return IdentifierKind.CUSTOMER_ID
    if "mail" in name or hashed:
        return IdentifierKind.EMAIL_SHA256 if hashed else IdentifierKind.EMAIL
    raise ConfigurationError(f"cannot tell what column {column!r} holds; say it with --kind")


def _copy_text(value: str) -> str:
    """A value in COPY's text format (customer ids may hold anything)."""
    if not any(c in value for c in "\\\t\n\r"):
        return value
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class _Counting:
    """Lines of a text file, counting the characters read (for the progress bar)."""

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.read = 0

    def __iter__(self) -> Iterator[str]:
        for line in self.handle:
            self.read += len(line)
            yield line


def _no_progress(_phase: str, _done: int, _total: int) -> None:
    return None


def scrub(
    dsn: str,
    source: Path,
    target: Path,
    column: str | None = None,
    kind: str | None = None,
    scope: Scope | None = None,
    phone_region: str = "US",
    drop_invalid: bool = False,
    progress: Progress = _no_progress,
) -> Report:
    """Write ``source``'s rows to ``target`` without those of suppressed people; report."""
    size = os.path.getsize(source)
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ConfigurationError(f"{source} is empty (no header row)")
        index = choose_column(header, column)
        sample = [row[index] for row, _ in zip(reader, range(SAMPLE_ROWS), strict=False) if len(row) > index]
    chosen = choose_kind(header[index], sample, kind)
    report = Report(kind=chosen.value, column=header[index], scope=scope.value if scope else None)
    report.invalid_dropped = drop_invalid
    invalid: set[int] = set()
    with (
        psycopg.connect(dsn, autocommit=False, application_name="optout-scrub") as conn,
        conn.cursor() as cur,
    ):
        cur.execute(
            "CREATE TEMPORARY TABLE scrub_rows (n int8 NOT NULL, subject text NOT NULL) ON COMMIT DROP"
        )
        with source.open(newline="", encoding="utf-8-sig") as handle:
            counting = _Counting(handle)
            reader = csv.reader(counting)
            next(reader, None)
            with cur.copy("COPY scrub_rows (n, subject) FROM STDIN") as copy:
                chunk: list[str] = []
                for n, row in enumerate(reader):
                    report.rows += 1
                    try:
                        if len(row) <= index:
                            raise BadIdentifier("missing_column")
                        subject = subject_of(chosen, row[index], phone_region)
                    except BadIdentifier as exc:
                        invalid.add(n)
                        report.invalid_reasons[exc.reason] += 1
                        continue
                    chunk.append(f"{n}\t{_copy_text(subject)}\n")
                    if len(chunk) >= COPY_CHUNK:
                        copy.write("".join(chunk))
                        chunk.clear()
                        progress("reading", counting.read, size)
                if chunk:
                    copy.write("".join(chunk))
            progress("reading", size, size)
        cur.execute("ANALYZE scrub_rows")
        cur.execute(_REMOVED, {"scope": scope.value if scope else None})
        removed: dict[int, list[str]] = {int(n): list(scopes) for n, scopes in cur.fetchall()}
        conn.rollback()  # drops the temporary table; nothing was written
    report.invalid = len(invalid)
    report.removed = len(removed)
    for scopes in removed.values():
        report.by_scope.update(scopes)
    skip = set(removed) | (invalid if drop_invalid else set())
    with (
        source.open(newline="", encoding="utf-8-sig") as handle,
        target.open("w", newline="", encoding="utf-8") as out,
    ):
        reader = csv.reader(handle)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(next(reader))
        for n, row in enumerate(reader):
            if n not in skip:
                writer.writerow(row)
                report.kept += 1
            if n % 50_000 == 0:
                progress("writing", n, report.rows)
        progress("writing", report.rows, report.rows)
    return report
