"""Running a replay against PostgreSQL and Kafka (the pure part is ``plan.py``, the bytes
``encode.py``).

The run walks the suppressed subjects in subject order, in batches of ``batch_size``
subjects, through overlapping stages (one process; each thread has its own database
connection):

1. a reading thread reads the next batch: the state rows after the previous batch's last
   subject (one walk of the state's primary key, stopped after enough rows for
   ``batch_size`` subjects), with the requests (event ids) suppressing each subject, and, for
   the kinds whose raw value the destination takes, their sealed suppression-list entries
   (one range scan of the list's key per kind); it reads up to ``PREFETCH`` batches ahead,
   in REPEATABLE READ transactions renewed every ``SNAPSHOT_SECONDS``;
2. the main thread decrypts the raw values, builds each command's id and Avro bytes (the
   compiled kernel, services/replay/kernel.py, for the usual subject kinds; else
   ``KeyRing.open_many`` and ``encode.ReplayBuilder``, byte-identical) and produces them to
   ``optout.suppress.<destination>`` (throttled by a token bucket), then goes on with the
   next batch;
3. once a batch's delivery reports are all in (and every earlier batch's), one of two saving
   threads (a connection each: two batches at once) writes its commands into the audit trail
   of the requests whose suppression they carry (one ``COPY`` of ``audit.replayed_rows``);
   once a batch's audit rows are written, and every earlier batch's, the main thread saves
   the cursor and the counts in ``replay_runs``, in batch order.

The ``replayed`` audit rows hold the event ids the batch read (exactly the rows read,
whatever intake changed since) and the command ids the batch sent; PostgreSQL re-reads
nothing for them. The replayer
writes no ``replay_commands`` row: the confirmer records each ack there when it arrives
(services/confirmer/store.py; the run's ``replay_runs`` row, inserted before anything is
sent, tells it the command is a replay's). An ack can come before its command's ``replayed``
row (the connector was faster than the delivery reports): the confirmer then cannot write its
``acknowledged`` row and flags it; after each batch's ``replayed`` rows the replayer writes
the flagged acks' rows, under a lock shared with the confirmer, so that whichever comes
second writes it (``audit.replay_acks_catch_up``).

A kill anywhere re-does the batches produced or delivered after the saved cursor (at most
six: up to three produced and not all delivered, up to three delivered and not yet saved),
with the same command ids: the connector's dedupe store (``connector_applied``) acknowledges
a command it has already applied without applying it again; their audit rows are written
again.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Producer

from services.common import audit
from services.common.avro import Codec, default_codec
from services.common.clock import Clock, SystemClock
from services.common.contract import Destination, Identifier
from services.common.db import connect
from services.common.errors import ConfigurationError, RetriableError
from services.common.kafka import DeliveryTracker, make_producer
from services.common.logging import get_logger
from services.common.records import PostalAddressRecord, postal_address_record
from services.common.sealing import KeyRing
from services.common.settings import Settings
from services.replay.encode import ReplayBuilder
from services.replay.kernel import attach_sealed as kernel_attach_sealed
from services.replay.kernel import kernel
from services.replay.plan import SubjectKind, TokenBucket, usable
from services.suppression.entries import context, suppression_ring

log = get_logger(__name__)

Progress = Callable[[int, int], None]  # (subjects done, subjects in all)


@dataclass
class ReplayReport:
    replay_id: str
    destination: str
    resumed: bool
    total: int  # subjects to go through in this run (after the cursor, when resumed)
    sent: int = 0  # commands produced and delivered, this run and the runs it resumed
    skipped: int = 0  # subjects the destination cannot use (no identifier it takes)
    seconds: float = 0.0
    dry_run: bool = False
    stopped: bool = False  # stopped early (``stop_after``)

    def lines(self) -> list[str]:
        verb = "would send" if self.dry_run else "sent"
        rate = self.sent / self.seconds if self.seconds > 0 and not self.dry_run else 0.0
        out = [
            f"replay {self.replay_id} to {self.destination}"
            + (" (resumed)" if self.resumed else "")
            + (" (dry run)" if self.dry_run else ""),
            f"subjects: {self.total}",
            f"{verb}: {self.sent} commands",
            f"skipped: {self.skipped} (no identifier the destination takes)",
        ]
        if not self.dry_run:
            out.append(f"time: {self.seconds:.1f}s ({rate:.0f} commands/s)")
            out.append("stopped early: run again to resume" if self.stopped else "finished")
        return out


_OPEN_RUN = """
SELECT replay_id, since, cursor_subject, sent, skipped FROM replay_runs
WHERE destination = %s AND finished_at IS NULL
"""

_FILTER = """suppressed AND scope = ANY(%(scopes)s)
  AND (%(since)s::timestamptz IS NULL OR since >= %(since)s::timestamptz)"""

# The next batch: the state rows after ``cursor`` in primary-key order (subject, scope), an
# index walk that stops after ``rows`` rows: ``batch_size`` times the number of scopes, enough
# for ``batch_size`` subjects, so each batch costs the same however far the run is. The rows
# come as ONE text value, a line each: ``<since in epoch ms> <scope> <event id> <subject>`` (the
# subject last, with backslash and newline escaped as \\ and \n; the event id, the winning
# request, already escaped for COPY's text format, so that the audit rows are written as it
# comes: backslash, newline, carriage return and tab as \\ \n \r \t, space as \x20, none left
# to split on), which Python splits: decoding
# thousands of rows of three columns through psycopg cost about 2 µs a row. The milliseconds
# are computed as ``clock.to_millis`` does (the double nearest the epoch seconds, times 1000,
# truncated: tests/integration/test_replay_sql.py).
_NEXT = f"""
SELECT string_agg(
    trunc(extract(epoch FROM since)::float8 * 1000)::bigint::text || ' ' || scope || ' '
        || replace(replace(replace(replace(replace(event_id, '\\', '\\\\'), E'\\n', '\\n'), E'\\r', '\\r'),
                   E'\\t', '\\t'), ' ', '\\x20') || ' '
        || replace(replace(subject, '\\', '\\\\'), E'\\n', '\\n'),
    E'\\n' ORDER BY subject, scope)
FROM (
    SELECT subject, scope, since, event_id FROM suppression_state
    WHERE {_FILTER} AND subject > %(cursor)s
    ORDER BY subject, scope LIMIT %(rows)s
) s
"""

# The sealed entries of one kind for the batch's subjects of that kind: their hashes are one
# range of the list's primary key (the subjects share a prefix, so subject order is hash
# order), read in one index range scan rather than a lookup per subject; one text value, a
# line ``<sha256> <sealed>`` each (hex and base64url: nothing to escape).
_SEALED = """
SELECT string_agg(sha256 || ' ' || sealed, E'\\n') FROM suppression_list
WHERE kind = %s AND sha256 >= %s AND sha256 <= %s
"""

# The subjects to go through. A subject has one row per scope (the primary key), so with one
# scope its rows are counted without the DISTINCT (a sort of every subject: about 1 µs a row).
_COUNT = f"""
SELECT count(DISTINCT subject) FROM suppression_state WHERE {_FILTER} AND subject > %(cursor)s
"""
_COUNT_ONE_SCOPE = f"""
SELECT count(*) FROM suppression_state WHERE {_FILTER} AND subject > %(cursor)s
"""

_CURSOR = """
UPDATE replay_runs SET cursor_subject = %s, sent = sent + %s, skipped = skipped + %s
WHERE replay_id = %s
"""

# The suppression-list kind whose raw value a destination taking this identifier needs, per
# subject kind (``plan.sealed_kind``).
_SEALED_KINDS = {
    SubjectKind.EMAIL.value: (Identifier.EMAIL, "email"),
    SubjectKind.PHONE.value: (Identifier.PHONE, "phone"),
    SubjectKind.POSTAL.value: (Identifier.POSTAL_ADDRESS, "postal"),
}


def new_replay_id(destination: str, now: datetime) -> str:
    """Sortable by start time, so a later replay's request id ranks above an earlier one's
    at the connector (newest wins on equal ``requested_at``)."""
    return f"{now:%Y%m%dT%H%M%S%fZ}-{destination}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Batch:
    """The subjects after ``lo`` up to and including ``hi``."""

    lo: str
    hi: str


@dataclass(frozen=True)
class BatchResult:
    sent: int
    skipped: int
    subjects: int


@dataclass(frozen=True)
class Prepared:
    """A batch's commands, ready to produce."""

    keys: list[str]  # command ids (the Kafka keys)
    values: list[bytes]
    skipped: list[str]  # the subjects of the batch without a command
    issued_at: datetime
    result: BatchResult
    events: list[tuple[str, ...]]  # per command, the requests it carries (``Row``; COPY-escaped)


DELIVERY_TIMEOUT_SECONDS = 60.0
SNAPSHOT_SECONDS = 60.0  # a reading snapshot is renewed (between batches) after this long
KEEPALIVE_SECONDS = 10.0  # a reading transaction waiting for the main thread runs SELECT 1 this often
PREFETCH = 2  # batches read ahead of the one being built (in-process runs)
SAVERS = 2  # connections writing the audit rows of delivered batches at once


# subject, scopes, newest since (epoch milliseconds), sealed entry, the event ids of the
# requests suppressing it for those scopes (distinct; escaped for COPY's text format)
Row = tuple[str, tuple[str, ...], int, str | None, tuple[str, ...]]


@dataclass(frozen=True)
class SnapshotEnd:
    """The reading thread ends its snapshot once the main thread has finished (delivered,
    audited, saved) every batch read in it and set ``done``."""

    done: threading.Event


# What the reading thread hands the main thread: a batch and its rows, the end of a snapshot,
# the end of the run (None) or the error it met.
Read = tuple["Batch", list[Row]] | SnapshotEnd | BaseException | None


def _unescape(subject: str) -> str:
    """A subject as ``_NEXT`` escaped it (backslash and newline)."""
    return _ESCAPED.sub(lambda m: "\n" if m[1] == "n" else m[1], subject)


_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def parse_python(text: str, size: int) -> list[Row]:
    """The rows of ``_NEXT``'s text: a subject's lines merged (its scopes, its newest since,
    its distinct event ids), at most ``size`` subjects (0.65 µs a row: a compiled one was no
    faster, str.split is already C)."""
    rows: list[Row] = []
    append = rows.append
    last = None
    escaped = "\\" in text
    scopes: dict[str, tuple[str, ...]] = {}  # one tuple per scope
    for line in text.split("\n"):
        millis, scope, event, subject = line.split(" ", 3)
        if escaped and "\\" in subject:
            subject = _unescape(subject)
        if subject == last:
            previous = rows[-1]
            events = previous[4] if event in previous[4] else (*previous[4], event)
            rows[-1] = (subject, (*previous[1], scope), max(previous[2], int(millis)), None, events)
        else:
            one = scopes.get(scope)
            if one is None:
                one = scopes[scope] = (scope,)
            append((subject, one, int(millis), None, (event,)))
            last = subject
    # A subject has at most one row per scope, so the walk holds at least ``size``
    # subjects when it was cut short; only the last one can miss rows, and it is beyond
    # the first ``size`` unless every one has all its rows.
    del rows[size:]
    return rows


def attach_sealed_python(rows: list[Row], where: list[int], text: str | None) -> None:
    """``rows[i]`` for each i of ``where`` with its sealed entry from ``_SEALED``'s text (None:
    none), by the subject's part after its first colon (``kernel.attach_sealed`` compiled)."""
    found = dict(line.split(" ", 1) for line in text.split("\n")) if text else {}
    for i in where:
        subject, scopes, since, _, events = rows[i]
        rows[i] = (subject, scopes, since, found.get(subject.partition(":")[2]), events)


class BatchReader:
    """Reads batches for one destination (and ``--since``)."""

    def __init__(self, dest: Destination, since: datetime | None) -> None:
        self.dest = dest
        self.since = since
        self.scopes = sorted(s.value for s in dest.scopes)
        self.sealed_kinds = {
            prefix: kind
            for prefix, (identifier, kind) in _SEALED_KINDS.items()
            if identifier in dest.identifiers
        }

    def next(
        self, conn: psycopg.Connection[Any], cursor: str, size: int, sealed: bool = True
    ) -> tuple[Batch, list[Row]] | None:
        """The ``size`` subjects after ``cursor`` (fewer at the end; None: none left), each
        with its scopes, its newest ``since`` and, when the destination takes its raw value
        (and ``sealed``), its sealed suppression-list entry (None if absent)."""
        params = {
            "scopes": self.scopes,
            "since": self.since,
            "cursor": cursor,
            "rows": size * len(self.scopes),
        }
        found = conn.execute(_NEXT, params).fetchone()
        text = found[0] if found else None
        if not text:
            return None
        rows = parse_python(text, size)
        if not rows:
            return None
        return Batch(cursor, rows[-1][0]), self.sealed(conn, rows) if sealed else rows

    def sealed(self, conn: psycopg.Connection[Any], rows: list[Row]) -> list[Row]:
        """``rows`` with the sealed entries of the kinds whose raw value the destination takes."""
        if not rows or not self.sealed_kinds:
            return rows
        hashes: dict[str, list[int]] = {}
        for i, (subject, _, _, _, _) in enumerate(rows):
            prefix = subject.partition(":")[0]
            if prefix in self.sealed_kinds:
                hashes.setdefault(prefix, []).append(i)
        for prefix, where in hashes.items():
            first = rows[where[0]][0].partition(":")[2]
            last = rows[where[-1]][0].partition(":")[2]
            text = conn.execute(_SEALED, (self.sealed_kinds[prefix], first, last)).fetchone()
            value = str(text[0]) if text and text[0] else None
            if not kernel_attach_sealed(rows, where, value):
                attach_sealed_python(rows, where, value)
        return rows


class BatchSender:
    """Sends whole batches of one run: read, decrypt, build, produce."""

    def __init__(
        self,
        settings: Settings,
        dest: Destination,
        replay_id: str,
        since: datetime | None,
        rate: float | None,
        producer: Producer,
        ring: KeyRing,
        codec: Codec,
        clock: Clock,
    ) -> None:
        self.dest = dest
        self.replay_id = replay_id
        self.reader = BatchReader(dest, since)
        self.bucket = TokenBucket(rate) if rate else None
        self.producer = producer
        self.ring = ring
        self.clock = clock
        self.builder = ReplayBuilder(codec, replay_id, dest)
        self.kernel = kernel(ring, self.builder)  # None: not compiled, the Python path only
        self.topic = settings.suppress_topic(dest.id)
        self.since = since

    def raw_values(self, rows: Sequence[Row]) -> list[str | PostalAddressRecord | None]:
        """Each row's decrypted value (None: none needed, or not in the suppression list)."""
        values: list[str | PostalAddressRecord | None] = [None] * len(rows)
        where: list[int] = []
        sealed: list[str] = []
        contexts: list[bytes] = []
        kinds = self.reader.sealed_kinds
        for i, (subject, _, _, found, _) in enumerate(rows):
            if found is not None:
                prefix, _, sha256 = subject.partition(":")
                where.append(i)
                sealed.append(found)
                contexts.append(context(kinds[prefix], sha256))
        for i, plain in zip(where, self.ring.open_many(sealed, contexts), strict=True):
            text = plain.decode("utf-8")
            if rows[i][0].startswith("postal:"):
                values[i] = postal_address_record(json.loads(text))
            else:
                values[i] = text
        return values

    def prepare(self, rows: Sequence[Row]) -> Prepared:
        """Decrypt, then build each command's id and bytes (None for a subject the
        destination cannot use): in the compiled kernel (services/replay/kernel.py), the rows
        it leaves (a postal address, a device, ...) and a batch it cannot open in Python."""
        now = self.clock.now()
        self.builder.at(now)
        built = self.kernel.build(list(rows)) if self.kernel is not None else None
        if built is None:
            return self.prepare_python(rows, now)
        rest = [i for i, one in enumerate(built) if one is False]
        if rest:
            left = [rows[i] for i in rest]
            build = self.builder.build
            for i, (subject, scopes, since, _, _), found in zip(
                rest, left, self.raw_values(left), strict=True
            ):
                built[i] = build(subject, scopes, since, found)
        keys: list[str] = []
        values: list[bytes] = []
        events: list[tuple[str, ...]] = []
        skipped: list[str] = []
        for row, one in zip(rows, built, strict=True):
            if one:
                keys.append(one[0])
                values.append(one[1])
                events.append(row[4])
            else:
                skipped.append(row[0])
        result = BatchResult(len(keys), len(rows) - len(keys), len(rows))
        return Prepared(keys, values, skipped, now, result, events)

    def prepare_python(self, rows: Sequence[Row], now: datetime) -> Prepared:
        """``prepare`` in Python only (the reference of the kernel), issued at ``now``."""
        raw = self.raw_values(rows)
        build = self.builder.build
        self.builder.at(now)
        keys: list[str] = []
        values: list[bytes] = []
        events: list[tuple[str, ...]] = []
        skipped: list[str] = []
        for (subject, scopes, since, _, requests), found in zip(rows, raw, strict=True):
            built = build(subject, scopes, since, found)
            if built is not None:
                keys.append(built[0])
                values.append(built[1])
                events.append(requests)
            else:
                skipped.append(subject)
        result = BatchResult(len(keys), len(rows) - len(keys), len(rows))
        return Prepared(keys, values, skipped, now, result, events)

    def produce(self, prepared: Prepared) -> DeliveryTracker:
        """Produce a batch (throttled); its tracker counts the delivery reports."""
        tracker = DeliveryTracker(self.producer)
        produce = tracker.produce
        topic = self.topic
        bucket = self.bucket
        for key, value in zip(prepared.keys, prepared.values, strict=True):
            if bucket is not None:
                bucket.take()
            produce(topic, value=value, key=key)
        return tracker


def delivered(tracker: DeliveryTracker) -> bool:
    """Whether every message of a batch has its delivery report (serving the reports due);
    ``RetriableError`` if one failed."""
    tracker.producer.poll(0)
    if tracker.failures:
        raise RetriableError(
            f"{len(tracker.failures)} messages failed delivery (first: {tracker.failures[0]})"
        )
    return tracker.pending <= 0


class Replayer:
    def __init__(
        self,
        settings: Settings,
        destination: str,
        since: datetime | None = None,
        rate: float | None = None,
        batch_size: int = 2000,
        progress: Progress | None = None,
        clock: Clock | None = None,
        producer: Producer | None = None,
        codec: Codec | None = None,
        ring: KeyRing | None = None,
        stop_after: int | None = None,
    ) -> None:
        found = settings.destinations.get(destination)
        if found is None:
            known = ", ".join(settings.destinations.names) or "none"
            raise ConfigurationError(f"--destination {destination!r}: no such destination (known: {known})")
        if batch_size < 1:
            raise ConfigurationError("--batch-size must be at least 1")
        self.settings = settings
        self.dest: Destination = found
        self.since = since
        self.rate = rate
        self.batch_size = batch_size
        self.progress = progress
        self.clock = clock or SystemClock()
        self._producer = producer
        self.codec = codec or default_codec()
        self._ring = ring
        self.stop_after = stop_after  # batches (tests: a run killed halfway)
        self.topic = settings.suppress_topic(found.id)
        self.scopes = sorted(s.value for s in found.scopes)

    def count(self, conn: psycopg.Connection[Any], cursor: str = "") -> int:
        params = {"scopes": self.scopes, "cursor": cursor, "since": self.since}
        row = conn.execute(_COUNT if len(self.scopes) > 1 else _COUNT_ONE_SCOPE, params).fetchone()
        return int(row[0]) if row else 0

    def dry_run(self) -> ReplayReport:
        """Counts only: the subjects and, of them, the commands it would send (no decryption:
        a raw value later missing from the suppression list would be skipped for real)."""
        with connect(self.settings.dsn(), autocommit=True) as conn:
            open_run = conn.execute(_OPEN_RUN, (self.dest.id,)).fetchone()
            cursor = str(open_run[2]) if open_run else ""
            if open_run is not None:
                self.since = open_run[1]
            report = ReplayReport(
                str(open_run[0]) if open_run else "(new)",
                self.dest.id,
                resumed=open_run is not None,
                total=self.count(conn, cursor),
                dry_run=True,
            )
            reader = BatchReader(self.dest, self.since)
            while (found := reader.next(conn, cursor, self.batch_size, sealed=False)) is not None:
                batch, rows = found
                for row in rows:
                    ok = usable(row[0], self.dest)
                    report.sent += ok
                    report.skipped += not ok
                cursor = batch.hi
            return report

    def run(self) -> ReplayReport:
        started = time.monotonic()
        with connect(self.settings.dsn(), autocommit=True) as conn:
            report, cursor = self._open(conn)
            with ThreadPoolExecutor(1, thread_name_prefix="replay-count") as counting:
                total = counting.submit(self._count_apart, cursor)
                self._run_here(conn, report, cursor, total)
                report.total = total.result()
        report.seconds = time.monotonic() - started
        log.info(
            "replay batch run ended",
            replay_id=report.replay_id,
            destination=self.dest.id,
            sent=report.sent,
            skipped=report.skipped,
            stopped=report.stopped,
        )
        return report

    # --- internals --------------------------------------------------------------------
    def _count_apart(self, cursor: str) -> int:
        """The subjects to go through, counted on a connection of its own (for the progress
        bar and its ETA) while the first batches are sent."""
        with connect(self.settings.dsn(), autocommit=True) as conn:
            return self.count(conn, cursor)

    def _open(self, conn: psycopg.Connection[Any]) -> tuple[ReplayReport, str]:
        """The open run of this destination (resumed), or a new one."""
        row = conn.execute(_OPEN_RUN, (self.dest.id,)).fetchone()
        if row is not None:
            replay_id, since, cursor, sent, skipped = row
            if self.since is not None and since != self.since:
                raise ConfigurationError(
                    f"an unfinished replay to {self.dest.id} ({replay_id}) runs with --since "
                    f"{since.isoformat() if since else '(none)'}; resume it with the same --since"
                )
            self.since = since
            report = ReplayReport(replay_id, self.dest.id, True, 0, sent, skipped)
            log.info("replay resumed", replay_id=replay_id, destination=self.dest.id)
            return report, str(cursor)
        now = self.clock.now()
        replay_id = new_replay_id(self.dest.id, now)
        conn.execute(
            "INSERT INTO replay_runs (replay_id, destination, since, started_at) VALUES (%s, %s, %s, %s)",
            (replay_id, self.dest.id, self.since, now),
        )
        log.info("replay started", replay_id=replay_id, destination=self.dest.id)
        return ReplayReport(replay_id, self.dest.id, False, 0), ""

    def _audit(
        self, conns: queue.Queue[psycopg.Connection[Any]], replay_id: str, batch: Batch, prepared: Prepared
    ) -> None:
        """After a delivered batch, on a saving thread (with one of ``conns``): write its
        commands into the audit trail of the requests whose suppression they carry (one
        ``COPY`` of the rows ``audit.replayed_rows`` writes from what the batch read: its
        own transaction), then, in a second transaction (READ COMMITTED, under the
        destination's exclusive audit lock), the ``acknowledged`` rows of acks the confirmer
        recorded before their command's ``replayed`` rows existed
        (``audit.replay_acks_catch_up``)."""
        if not prepared.keys:
            return
        rows = audit.replayed_rows(
            self.dest.id,
            prepared.keys,
            prepared.events,
            prepared.issued_at,
            f"replayed to {self.dest.id} ({replay_id})",
        )
        catch_up = audit.replay_acks_catch_up(replay_id, self.dest.id, self.clock.now())
        conn = conns.get()
        try:
            with conn.cursor() as cur, cur.copy(audit.REPLAYED_COPY) as copy:
                copy.write(rows)
            conn.execute(catch_up)
        finally:
            conns.put(conn)

    def _save(self, conn: psycopg.Connection[Any], replay_id: str, batch: Batch, prepared: Prepared) -> None:
        """Once a batch's audit rows are written (and every earlier batch's, and its cursor),
        save the cursor and the counts (outside the snapshot: the run's row changed since)."""
        result = prepared.result
        conn.execute(_CURSOR, (batch.hi, result.sent, result.skipped, replay_id))

    def _delivered(self, report: ReplayReport, prepared: Prepared, done: int, total: Future[int]) -> int:
        """Count a delivered batch and show the progress."""
        report.sent += prepared.result.sent
        report.skipped += prepared.result.skipped
        done += prepared.result.subjects
        if self.progress and total.done():  # the bar waits for the count
            self.progress(done, max(total.result(), done))
        return done

    def _finish(
        self, conn: psycopg.Connection[Any], report: ReplayReport, batches: int, done: int, total: Future[int]
    ) -> None:
        """Close the run when it went through every subject (a run stopped by ``stop_after``
        stays open, to be resumed, even if it sent the last batch)."""
        if self.progress:
            self.progress(done, max(total.result(), done))
        if self.stop_after is None or batches < self.stop_after:
            conn.execute(
                "UPDATE replay_runs SET finished_at = %s WHERE replay_id = %s",
                (self.clock.now(), report.replay_id),
            )
        else:
            report.stopped = True

    def _run_here(
        self, conn: psycopg.Connection[Any], report: ReplayReport, cursor: str, total: Future[int]
    ) -> None:
        """One process, overlapping stages: a thread reads the next batches (its own
        connection, one snapshot), the main thread builds and produces them; once a batch's
        delivery reports are in, a saving thread (``SAVERS``, a connection each) writes its
        audit rows; the main thread saves the cursors in batch order (``conn``)."""
        producer = self._producer or make_producer(self.settings)
        ring = self._ring or suppression_ring(self.settings)
        sender = BatchSender(
            self.settings,
            self.dest,
            report.replay_id,
            self.since,
            self.rate,
            producer,
            ring,
            self.codec,
            self.clock,
        )
        if sender.kernel is None:
            log.warning("replay kernel not built (services/replay/_kernel.c, make install): Python path")
        reads: queue.Queue[Read] = queue.Queue(PREFETCH)
        stop = threading.Event()
        reader = threading.Thread(
            target=self._read_ahead,
            args=(cursor, sender.reader, reads, stop),
            name="replay-read",
            daemon=True,
        )
        reader.start()
        in_flight: deque[tuple[Batch, Prepared, DeliveryTracker]] = deque()
        saves: deque[tuple[Batch, Prepared, Future[None]]] = deque()
        done = batches = 0
        conns: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        try:
            with contextlib.ExitStack() as stack:
                for _ in range(SAVERS):
                    conns.put(stack.enter_context(connect(self.settings.dsn(), autocommit=True)))
                saver = stack.enter_context(ThreadPoolExecutor(SAVERS, thread_name_prefix="replay-save"))

                def saved(wait: bool) -> None:
                    """Save the cursor of each batch whose audit rows are written, in batch order
                    (``wait``: also the oldest one still being written)."""
                    nonlocal done, batches
                    while saves and (saves[0][2].done() or wait or len(saves) > PREFETCH):
                        batch, prepared, written = saves.popleft()
                        written.result()  # raises what the saving thread met
                        self._save(conn, report.replay_id, batch, prepared)
                        done = self._delivered(report, prepared, done, total)
                        batches += 1
                        wait = False

                def delivered_batch(batch: Batch, prepared: Prepared, tracker: DeliveryTracker) -> None:
                    tracker.wait(DELIVERY_TIMEOUT_SECONDS)
                    saves.append(
                        (batch, prepared, saver.submit(self._audit, conns, report.replay_id, batch, prepared))
                    )
                    saved(wait=False)

                while True:
                    item = reads.get()
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, SnapshotEnd):  # finish every batch read in it
                        while in_flight:
                            delivered_batch(*in_flight.popleft())
                        while saves:
                            saved(wait=True)
                        item.done.set()
                        continue
                    if item is not None:
                        batch, rows = item
                        prepared = sender.prepare(rows)
                        in_flight.append((batch, prepared, sender.produce(prepared)))
                    while in_flight and (delivered(in_flight[0][2]) or len(in_flight) > PREFETCH):
                        delivered_batch(*in_flight.popleft())
                    saved(wait=False)
                    if item is None:
                        break
                while in_flight:
                    delivered_batch(*in_flight.popleft())
                while saves:
                    saved(wait=True)
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    reads.get(timeout=0.05)
            reader.join()
        self._finish(conn, report, batches, done, total)

    def _read_ahead(
        self,
        cursor: str,
        reader: BatchReader,
        out: queue.Queue[Read],
        stop: threading.Event,
    ) -> None:
        """The reading thread: each batch with its rows, then None (or the error). It reads in a
        REPEATABLE READ transaction (one snapshot for the batches read in it) that it keeps open
        until every batch read in it is saved: after ``SNAPSHOT_SECONDS`` it hands a
        ``SnapshotEnd`` and waits for the main thread to finish those batches, then starts a new
        one (VACUUM is held back that long at most); the last one stays open until ``stop`` (the
        end of the run). While it waits, it runs ``SELECT 1`` every ``KEEPALIVE_SECONDS`` (a
        throttled run may wait long; a server's ``idle_in_transaction_session_timeout`` would end
        the snapshot)."""
        try:
            with connect(self.settings.dsn(), autocommit=True) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                count = 0
                more = True
                while more:
                    with conn.transaction():
                        started = time.monotonic()
                        while True:
                            found = None
                            if self.stop_after is None or count < self.stop_after:
                                found = reader.next(conn, cursor, self.batch_size)
                            if found is None or stop.is_set():
                                more = False
                                _hand(conn, out, None)
                                _idle(conn, stop, stop)  # keep the snapshot until the run ends
                                break
                            batch, rows = found
                            _hand(conn, out, (batch, rows))
                            cursor = batch.hi
                            count += 1
                            if time.monotonic() - started >= SNAPSHOT_SECONDS:
                                ended = SnapshotEnd(threading.Event())
                                _hand(conn, out, ended)
                                _idle(conn, ended.done, stop)
                                break
        except BaseException as exc:  # handed to the main thread, which raises it
            out.put(exc)


def _hand(conn: psycopg.Connection[Any], out: queue.Queue[Read], item: Read) -> None:
    """Put ``item`` for the main thread, keeping ``conn``'s transaction alive meanwhile."""
    while True:
        try:
            out.put(item, timeout=KEEPALIVE_SECONDS)
            return
        except queue.Full:
            conn.execute("SELECT 1")


def _idle(conn: psycopg.Connection[Any], done: threading.Event, stop: threading.Event) -> None:
    """Wait for ``done`` (or ``stop``), keeping ``conn``'s transaction alive meanwhile."""
    due = time.monotonic() + KEEPALIVE_SECONDS
    while not done.wait(0.1) and not stop.is_set():
        if time.monotonic() >= due:
            conn.execute("SELECT 1")
            due = time.monotonic() + KEEPALIVE_SECONDS
