"""Running a replay against PostgreSQL and Kafka (the pure part is ``plan.py``).

Each batch is durable before the cursor moves:

1. read the next ``batch_size`` suppressed subjects after the cursor (``suppression_state``,
   in subject order, only the destination's scopes, only since ``--since``);
2. decrypt the raw values the destination needs from the suppression list;
3. record one ``replay_commands`` row per command (so the confirmer knows its ack);
4. produce the commands to ``optout.suppress.<destination>`` (throttled by a token bucket)
   and wait for every delivery report;
5. save the cursor and the counts in ``replay_runs``.

A kill anywhere re-does at most the batch in flight, with the same command ids: the
connector's dedupe store (``connector_applied``) acknowledges a command it has already
applied without applying it again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Producer

from services.common import audit
from services.common.avro import Codec, default_codec
from services.common.clock import Clock, SystemClock
from services.common.contract import Destination
from services.common.db import connect
from services.common.errors import ConfigurationError
from services.common.kafka import DeliveryTracker, make_producer
from services.common.logging import get_logger
from services.common.records import PostalAddressRecord, postal_address_record
from services.common.sealing import KeyRing
from services.common.settings import Settings
from services.replay.plan import (
    Suppressed,
    TokenBucket,
    replay_command,
    sealed_kind,
    split_subject,
    usable,
)
from services.suppression.entries import open_value, suppression_ring

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

_SUBJECTS = """
SELECT subject, array_agg(scope ORDER BY scope), max(since) FROM suppression_state
WHERE suppressed AND scope = ANY(%(scopes)s) AND subject > %(cursor)s
  AND (%(since)s::timestamptz IS NULL OR since >= %(since)s::timestamptz)
GROUP BY subject ORDER BY subject LIMIT %(limit)s
"""

_COUNT = """
SELECT count(DISTINCT subject) FROM suppression_state
WHERE suppressed AND scope = ANY(%(scopes)s) AND subject > %(cursor)s
  AND (%(since)s::timestamptz IS NULL OR since >= %(since)s::timestamptz)
"""

_SEALED = """
SELECT kind, sha256, sealed FROM suppression_list WHERE kind = %s AND sha256 = ANY(%s)
"""

_RECORD = """
INSERT INTO replay_commands (command_id, replay_id, destination)
SELECT c, %s, %s FROM unnest(%s::text[]) AS t(c)
ON CONFLICT (command_id) DO NOTHING
"""

_CURSOR = """
UPDATE replay_runs SET cursor_subject = %s, sent = sent + %s, skipped = skipped + %s
WHERE replay_id = %s
"""


def new_replay_id(destination: str, now: datetime) -> str:
    """Sortable by start time, so a later replay's request id ranks above an earlier one's
    at the connector (newest wins on equal ``requested_at``)."""
    return f"{now:%Y%m%dT%H%M%S%fZ}-{destination}-{uuid.uuid4().hex[:8]}"


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
        self.bucket = TokenBucket(rate) if rate else None
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
        row = conn.execute(_COUNT, params).fetchone()
        return int(row[0]) if row else 0

    def dry_run(self) -> ReplayReport:
        """Counts only: the subjects and, of them, the commands it would send (no decryption:
        a raw value later missing from the suppression list would be skipped for real)."""
        with connect(self.settings.dsn(), autocommit=True) as conn:
            open_run = conn.execute(_OPEN_RUN, (self.dest.id,)).fetchone()
            cursor = str(open_run[2]) if open_run else ""
            report = ReplayReport(
                str(open_run[0]) if open_run else "(new)",
                self.dest.id,
                resumed=open_run is not None,
                total=self.count(conn, cursor),
                dry_run=True,
            )
            while True:
                rows = self._subjects(conn, cursor)
                if not rows:
                    break
                for row in rows:
                    ok = usable(row.subject, self.dest)
                    report.sent += ok
                    report.skipped += not ok
                cursor = rows[-1].subject
            return report

    def run(self) -> ReplayReport:
        started = time.monotonic()
        ring = self._ring or suppression_ring(self.settings)
        producer = self._producer or make_producer(self.settings)
        with connect(self.settings.dsn(), autocommit=True) as conn:
            report, cursor = self._open(conn)
            done = 0
            batches = 0
            if self.progress:
                self.progress(0, report.total)
            while True:
                rows = self._subjects(conn, cursor)
                if not rows:
                    conn.execute(
                        "UPDATE replay_runs SET finished_at = %s WHERE replay_id = %s",
                        (self.clock.now(), report.replay_id),
                    )
                    break
                sent, skipped = self._batch(conn, producer, ring, report.replay_id, rows)
                cursor = rows[-1].subject
                conn.execute(_CURSOR, (cursor, sent, skipped, report.replay_id))
                report.sent += sent
                report.skipped += skipped
                done += len(rows)
                batches += 1
                if self.progress:
                    self.progress(done, max(report.total, done))
                if self.stop_after is not None and batches >= self.stop_after:
                    report.stopped = True
                    break
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
            report = ReplayReport(replay_id, self.dest.id, True, self.count(conn, cursor), sent, skipped)
            log.info("replay resumed", replay_id=replay_id, destination=self.dest.id)
            return report, str(cursor)
        now = self.clock.now()
        replay_id = new_replay_id(self.dest.id, now)
        total = self.count(conn, "")
        conn.execute(
            "INSERT INTO replay_runs (replay_id, destination, since, started_at) VALUES (%s, %s, %s, %s)",
            (replay_id, self.dest.id, self.since, now),
        )
        log.info("replay started", replay_id=replay_id, destination=self.dest.id, subjects=total)
        return ReplayReport(replay_id, self.dest.id, False, total), ""

    def _subjects(self, conn: psycopg.Connection[Any], cursor: str) -> list[Suppressed]:
        params = {"scopes": self.scopes, "cursor": cursor, "since": self.since, "limit": self.batch_size}
        return [Suppressed(r[0], tuple(r[1]), r[2]) for r in conn.execute(_SUBJECTS, params).fetchall()]

    def _raw_values(
        self, conn: psycopg.Connection[Any], ring: KeyRing, rows: Sequence[Suppressed]
    ) -> dict[str, str | PostalAddressRecord]:
        wanted: dict[tuple[str, str], str] = {}
        for row in rows:
            kind = sealed_kind(row.subject, self.dest)
            if kind is not None:
                wanted[(kind, split_subject(row.subject)[1])] = row.subject
        if not wanted:
            return {}
        found = []
        for kind in sorted({k for k, _ in wanted}):
            hashes = [h for k, h in wanted if k == kind]
            found += conn.execute(_SEALED, (kind, hashes)).fetchall()
        values: dict[str, str | PostalAddressRecord] = {}
        for kind, sha256, sealed in found:
            value = open_value(ring, kind, sha256, sealed)
            subject = wanted[(kind, sha256)]
            if kind == "postal":
                address = postal_address_record(json.loads(value))
                if address is not None:
                    values[subject] = address
            else:
                values[subject] = value
        return values

    def _batch(
        self,
        conn: psycopg.Connection[Any],
        producer: Producer,
        ring: KeyRing,
        replay_id: str,
        rows: Sequence[Suppressed],
    ) -> tuple[int, int]:
        raw = self._raw_values(conn, ring, rows)
        now = self.clock.now()
        commands = []
        subjects = []
        for row in rows:
            record = replay_command(replay_id, self.dest, row, raw.get(row.subject), now)
            if record is not None:
                commands.append(record)
                subjects.append(row.subject)
        if commands:
            conn.execute(_RECORD, (replay_id, self.dest.id, [c["command_id"] for c in commands]))
            tracker = DeliveryTracker(producer)
            encode = self.codec.encode
            for record in commands:
                if self.bucket is not None:
                    self.bucket.take()
                value = encode("SuppressionCommand", record)
                tracker.produce(self.topic, value=value, key=record["command_id"])
            tracker.wait(60.0)
            sent = [(c["command_id"], s) for c, s in zip(commands, subjects, strict=True)]
            audit.record_reissued(  # the trail of each subject's requests: one statement
                conn,
                audit.Reissue.REPLAY,
                self.dest.id,
                self.scopes,
                sent,
                now,
                f"replayed to {self.dest.id} ({replay_id})",
            )
        return len(commands), len(rows) - len(commands)
