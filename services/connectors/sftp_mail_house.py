"""sftp_mail_house: suppression files delivered to a mail house by SFTP, confirmed by receipts.

Each batch becomes one new file in the mail house's folder, ``<prefix><sequence>.csv`` with
an 8-digit zero-padded sequence (``suppressions-00000042.csv``): the columns, normalization
and CSV dialect of ``services.connectors.mail_house`` (header row; request_id, command_id,
name, three address lines, city, region, postal_code, country, suppressed_on, customer_id).
It is written as ``<name>.part`` and renamed when complete (SFTP ``rename``, which refuses an
existing target: an earlier file is never rewritten). The next sequence is one above the
highest in this destination's ``sftp_uploads`` rows and in the folder's listing, so it
survives restarts and files left by a crash.

The mail house imports the file and writes ``<name>.receipt`` (JSON, UTF-8)::

    {"file": "suppressions-00000042.csv", "rows": 2, "sha256": "<hex of the file's bytes>",
     "imported_at": "2026-12-01T06:00:00Z", "rejected": [{"row": 2, "reason": "..."}]}

``rows`` counts data rows (not the header); ``rejected[].row`` is a data row number from 1.
Only then are the file's commands acknowledged (``settle``): APPLIED, or REJECTED with the
row's reason; a receipt whose file, rows or sha256 disagree with what was sent rejects
every command of the file with the disagreement as the reason. Until then ``apply`` returns
``Awaiting`` (no ack, offset committed; the command stays PENDING). A command re-sent by the
sweeper whose file has no receipt after ``receipt_timeout_seconds`` is uploaded again in a
new file; within the timeout it keeps waiting.

The server's host key is pinned (``known_hosts``; nothing else is accepted): a changed or
unknown key, or a refused login, raises ``CredentialsRefused`` (paused, alerted, tried again
until fixed). Login by private key only (credential ``private_key``: the key's text, from an
environment variable or a file; optional ``passphrase``).

Options: host, port (22), username, remote_dir, known_hosts (path of an OpenSSH
known_hosts file), receipt_timeout_seconds (3600), file_prefix, connect_timeout_seconds,
export_dir (``<remote_dir>/export``: where the mail house publishes its current suppression
list, read by ``optout reconcile``; ``services.connectors.mail_house_export``).
SFTP: draft-ietf-secsh-filexfer-02 (https://datatracker.ietf.org/doc/html/draft-ietf-secsh-filexfer-02),
spoken by paramiko (https://docs.paramiko.org/en/stable/api/sftp.html).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import paramiko
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field, SecretStr

from services.common.clock import Clock, SystemClock
from services.common.contract import AckStatus, Destination
from services.common.db import LazyConnection
from services.common.errors import ConfigurationError, RetriableError
from services.common.logging import get_logger
from services.common.settings import Settings
from services.connectors.dedupe import StoredOutcome
from services.connectors.kinds import OPTIONS_CONFIG, parse_options, require_credential
from services.connectors.kit import Awaiting, Command, Connector, CredentialsRefused, Outcome
from services.connectors.mail_house import csv_row, render_rows
from services.connectors.mail_house_export import (
    EXPORT_DIR,
    Export,
    UnreadableExport,
    newest_export,
    parse_export,
)

log = get_logger(__name__)

KIND = "sftp_mail_house"
PART_SUFFIX = ".part"
RECEIPT_SUFFIX = ".receipt"
SEQUENCE_DIGITS = 8
NO_ADDRESS = "command carries no postal address"
SETTLE_BACKOFF_SECONDS = 5.0  # between receipt checks after a failed one


class SftpMailHouseOptions(BaseModel):
    model_config = OPTIONS_CONFIG

    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1)
    remote_dir: str = Field(min_length=1)
    known_hosts: str = Field(min_length=1, description="OpenSSH known_hosts file pinning the host key")
    receipt_timeout_seconds: float = Field(3600.0, gt=0)
    receipt_poll_seconds: float = Field(1.0, gt=0)
    file_prefix: str = Field("suppressions-", pattern=r"^[A-Za-z0-9_.-]+$")
    connect_timeout_seconds: float = Field(10.0, gt=0)
    refused_retry_seconds: float = Field(30.0, gt=0)
    export_dir: str | None = Field(None, min_length=1)


# --- pure parts ------------------------------------------------------------------------------
def file_name(prefix: str, sequence: int) -> str:
    return f"{prefix}{sequence:0{SEQUENCE_DIGITS}d}.csv"


def sequence_of(prefix: str, name: str) -> int | None:
    """The sequence of one of our files (also ``.part`` and ``.receipt``), else None."""
    match = re.fullmatch(rf"{re.escape(prefix)}(\d{{{SEQUENCE_DIGITS},}})\.csv(?:\.part|\.receipt)?", name)
    return int(match.group(1)) if match else None


def next_sequence(prefix: str, listing: Sequence[str], recorded: int | None) -> int:
    """One above the highest sequence in the folder or recorded (1 for the first file)."""
    seen = [s for s in (sequence_of(prefix, n) for n in listing) if s is not None]
    return max([0, recorded or 0, *seen]) + 1


@dataclass(frozen=True)
class Batch:
    """A file's content and the commands of its rows, in row order."""

    content: bytes
    commands: tuple[Command, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def build_file(commands: Sequence[Command], day: date) -> Batch:
    """The file for ``commands`` (each has a postal address with lines and a postal code)."""
    rows = []
    for command in commands:
        assert command.postal_address is not None
        rows.append(csv_row(command, command.postal_address, day))
    return Batch(render_rows(rows, with_header=True), tuple(commands))


def has_address(command: Command) -> bool:
    address = command.postal_address
    return bool(address and address.get("lines") and address.get("postal_code"))


@dataclass(frozen=True)
class Receipt:
    file: str
    rows: int
    sha256: str
    rejected: dict[int, str]  # data row (from 1) -> reason


class UnreadableReceipt(Exception):
    """A receipt that is not the documented JSON (perhaps still being written)."""


def parse_receipt(content: bytes) -> Receipt:
    try:
        body: Any = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableReceipt(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise UnreadableReceipt("not a JSON object")
    file, rows, digest, rejected = (
        body.get("file"),
        body.get("rows"),
        body.get("sha256"),
        body.get("rejected", []),
    )
    if not isinstance(file, str) or not isinstance(digest, str):
        raise UnreadableReceipt("file and sha256 must be strings")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise UnreadableReceipt("rows must be a non-negative integer")
    if not isinstance(rejected, list):
        raise UnreadableReceipt("rejected must be a list")
    refused: dict[int, str] = {}
    for entry in rejected:
        row = entry.get("row") if isinstance(entry, dict) else None
        reason = entry.get("reason") if isinstance(entry, dict) else None
        if not isinstance(row, int) or isinstance(row, bool) or not isinstance(reason, str):
            raise UnreadableReceipt("each rejected entry needs an integer row and a string reason")
        refused[row] = reason
    return Receipt(file, rows, digest.lower(), refused)


def disagreement(receipt: Receipt, name: str, rows: int, sha256: str) -> str | None:
    """Why a receipt does not confirm the file we sent, or None when it does."""
    if receipt.file != name:
        return f"mail house receipt names file {receipt.file!r}, not {name!r}"
    if receipt.rows != rows:
        return f"mail house receipt counts {receipt.rows} rows, {rows} were sent in {name}"
    if receipt.sha256 != sha256:
        return f"mail house receipt checksum differs from the file sent ({name})"
    if bad := [r for r in receipt.rejected if not 1 <= r <= rows]:
        return f"mail house receipt rejects row {bad[0]}, not in {name}"
    return None


@dataclass(frozen=True)
class Upload:
    name: str
    command_ids: tuple[str, ...]
    request_ids: tuple[str, ...]
    row_count: int
    sha256: str
    uploaded_at: datetime
    receipt_status: str | None
    receipt_detail: str | None
    rejected_rows: dict[int, str]


def upload_outcomes(upload: Upload) -> list[tuple[str, str, AckStatus, str | None]]:
    """(command id, request id, status, detail) of every row of a file with a receipt."""
    out: list[tuple[str, str, AckStatus, str | None]] = []
    for row, (command_id, request_id) in enumerate(
        zip(upload.command_ids, upload.request_ids, strict=True), 1
    ):
        if upload.receipt_status == "mismatch":
            out.append((command_id, request_id, AckStatus.REJECTED, upload.receipt_detail))
        elif row in upload.rejected_rows:
            out.append(
                (command_id, request_id, AckStatus.REJECTED, f"mail house: {upload.rejected_rows[row]}")
            )
        else:
            out.append((command_id, request_id, AckStatus.APPLIED, f"receipt for {upload.name}"))
    return out


# --- the record of uploads (migration 0006) ----------------------------------------------------
_COLUMNS = (
    "name, command_ids, request_ids, row_count, sha256, uploaded_at, "
    "receipt_status, receipt_detail, rejected_rows"
)


def _upload(row: tuple[Any, ...]) -> Upload:
    rejected = {int(k): str(v) for k, v in (row[8] or {}).items()}
    return Upload(row[0], tuple(row[1]), tuple(row[2]), row[3], row[4], row[5], row[6], row[7], rejected)


class UploadLog:
    def __init__(self, dsn: str, destination: str, prepared_statements: bool = True) -> None:
        self.destination = destination
        self._db = LazyConnection(dsn, autocommit=True, prepared_statements=prepared_statements)

    def highest_sequence(self) -> int | None:
        row = self._db.run(
            lambda c: c.execute(
                "SELECT max(sequence) FROM sftp_uploads WHERE destination = %s", (self.destination,)
            ).fetchone()
        )
        return int(row[0]) if row and row[0] is not None else None

    def latest_for(self, command_ids: Sequence[str]) -> dict[str, Upload]:
        """The newest file that carried each command."""
        # Not ``command_ids && wanted``: PostgreSQL filters every upload of the destination with
        # it (the planner prefers the primary key to the GIN index) and && compares each pair
        # of ids, so one batch of 1,000 against 60 stored uploads took a second. Unnesting and
        # hashing costs one pass over the stored ids (bench-connectors, issue #11).
        rows = self._db.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS}, sequence FROM sftp_uploads WHERE destination = %(d)s "
                "AND sequence IN (SELECT s.sequence FROM sftp_uploads s "
                "CROSS JOIN LATERAL unnest(s.command_ids) AS c(id) WHERE s.destination = %(d)s "
                "AND c.id IN (SELECT unnest(%(wanted)s::text[]))) ORDER BY sequence",
                {"d": self.destination, "wanted": list(command_ids)},
            ).fetchall()
        )
        wanted = set(command_ids)
        latest: dict[str, Upload] = {}
        for row in rows:
            upload = _upload(row)
            for command_id in upload.command_ids:
                if command_id in wanted:
                    latest[command_id] = upload
        return latest

    def waiting(self) -> list[Upload]:
        rows = self._db.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM sftp_uploads WHERE destination = %s AND receipt_status IS NULL "
                "ORDER BY sequence",
                (self.destination,),
            ).fetchall()
        )
        return [_upload(r) for r in rows]

    def add(self, sequence: int, name: str, remote_dir: str, batch: Batch, at: datetime) -> None:
        self._db.run(
            lambda c: c.execute(
                "INSERT INTO sftp_uploads (destination, sequence, name, remote_dir, command_ids, "
                "request_ids, row_count, sha256, uploaded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    self.destination,
                    sequence,
                    name,
                    remote_dir,
                    [c.command_id for c in batch.commands],
                    [c.request_id for c in batch.commands],
                    len(batch.commands),
                    batch.sha256,
                    at,
                ),
            )
        )

    def receive(
        self, name: str, status: str, detail: str | None, rejected: dict[int, str], at: datetime
    ) -> None:
        self._db.run(
            lambda c: c.execute(
                "UPDATE sftp_uploads SET receipt_status = %s, receipt_detail = %s, rejected_rows = %s, "
                "received_at = %s WHERE destination = %s AND name = %s",
                (status, detail, Jsonb({str(k): v for k, v in rejected.items()}), at, self.destination, name),
            )
        )

    def close(self) -> None:
        self._db.close()


# --- the connector -----------------------------------------------------------------------------
class SftpMailHouseConnector(Connector):
    def __init__(
        self,
        destination: str,
        options: SftpMailHouseOptions,
        private_key: paramiko.PKey,
        uploads: UploadLog,
        clock: Clock | None = None,
    ) -> None:
        self.destination = destination
        self.options = options
        self.private_key = private_key
        self.uploads = uploads
        self.clock = clock or SystemClock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._next_settle = 0.0

    # --- SFTP session ----------------------------------------------------------------------
    def _session(self) -> paramiko.SFTPClient:
        if self._sftp is not None:
            return self._sftp
        options = self.options
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(options.known_hosts)
        except OSError as exc:
            raise ConfigurationError(
                f"destination {self.destination!r} ({KIND}): known_hosts {options.known_hosts} "
                f"is not readable ({exc.strerror or exc})"
            ) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                options.host,
                port=options.port,
                username=options.username,
                pkey=self.private_key,
                timeout=options.connect_timeout_seconds,
                banner_timeout=options.connect_timeout_seconds,
                auth_timeout=options.connect_timeout_seconds,
                allow_agent=False,
                look_for_keys=False,
            )
            sftp = client.open_sftp()
        except paramiko.BadHostKeyException:
            client.close()
            raise CredentialsRefused(
                f"{options.host}:{options.port} presented a host key that is not the one pinned in "
                f"{options.known_hosts}: refusing to connect (a changed server or an attack)",
                retry_after=options.refused_retry_seconds,
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise CredentialsRefused(
                f"{options.host}:{options.port} refused the login of {options.username} with our key",
                retry_after=options.refused_retry_seconds,
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise CredentialsRefused(
                    f"{options.host}:{options.port} has no pinned host key in {options.known_hosts}",
                    retry_after=options.refused_retry_seconds,
                ) from None
            raise RetriableError(f"SFTP to {options.host}:{options.port} failed ({exc})") from exc
        except OSError as exc:
            client.close()
            raise RetriableError(f"SFTP to {options.host}:{options.port} unreachable ({exc})") from exc
        self._client, self._sftp = client, sftp
        return sftp

    def _drop_session(self) -> None:
        client, self._client, self._sftp = self._client, None, None
        if client is not None:
            client.close()

    def _remote(self, name: str) -> str:
        return f"{self.options.remote_dir.rstrip('/')}/{name}"

    # --- apply ----------------------------------------------------------------------------------
    def apply(self, commands: Sequence[Command]) -> list[Outcome | Awaiting]:
        results: list[Outcome | Awaiting] = []
        latest = self.uploads.latest_for([c.command_id for c in commands])
        now = self.clock.now()
        timeout = timedelta(seconds=self.options.receipt_timeout_seconds)
        to_send: list[Command] = []
        for command in commands:
            upload = latest.get(command.command_id)
            if not has_address(command):
                results.append(Outcome.rejected(command.command_id, NO_ADDRESS))
            elif upload is not None and upload.receipt_status is not None:
                results.extend(self._outcome_from(upload, command.command_id))
            elif upload is not None and now - upload.uploaded_at < timeout:
                results.append(Awaiting(command.command_id))
            else:
                to_send.append(command)
        if to_send:
            self._upload(build_file(to_send, now.date()))
            results.extend(Awaiting(c.command_id) for c in to_send)
        return results

    def _outcome_from(self, upload: Upload, command_id: str) -> list[Outcome]:
        return [
            Outcome(cid, status, detail)
            for cid, _, status, detail in upload_outcomes(upload)
            if cid == command_id
        ]

    def _upload(self, batch: Batch) -> None:
        try:
            sftp = self._session()
            sequence = next_sequence(
                self.options.file_prefix,
                sftp.listdir(self.options.remote_dir),
                self.uploads.highest_sequence(),
            )
            name = file_name(self.options.file_prefix, sequence)
            part = self._remote(name + PART_SUFFIX)
            with sftp.open(part, "wb") as handle:
                handle.write(batch.content)
            sftp.rename(part, self._remote(name))  # SFTP rename refuses an existing target
        except CredentialsRefused:
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._drop_session()
            raise RetriableError(f"upload to the mail house failed ({exc})") from exc
        self.uploads.add(sequence, name, self.options.remote_dir, batch, self.clock.now())
        log.info(
            "suppression file uploaded", destination=self.destination, file=name, rows=len(batch.commands)
        )

    # --- the mail house's export (read back by ``optout reconcile``) --------------------------
    def read_export(self) -> Export:
        """The newest export the mail house published (``ConfigurationError`` when there is
        none or it is not the documented format: one line naming the file)."""
        folder = self.options.export_dir or self._remote(EXPORT_DIR)
        where = f"{self.options.host}:{folder}"
        try:
            sftp = self._session()
            try:
                names = sftp.listdir(folder)
            except FileNotFoundError:
                names = []
            name = newest_export(names)
            if name is None:
                raise ConfigurationError(
                    f"destination {self.destination!r}: the mail house has published no export "
                    f"(no suppressions-YYYYMMDD.csv in {where}; see docs/destinations.md)"
                )
            path = f"{folder.rstrip('/')}/{name}"
            written = sftp.stat(path).st_mtime or 0
            buffer = io.BytesIO()
            sftp.getfo(path, buffer)
        except (CredentialsRefused, ConfigurationError):
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._drop_session()
            raise RetriableError(f"reading the mail house's export failed ({exc})") from exc
        try:
            keys = parse_export(buffer.getvalue())
        except UnreadableExport as why:
            raise ConfigurationError(f"destination {self.destination!r}: {where}/{name}: {why}") from None
        return Export(name, datetime.fromtimestamp(written, UTC), keys)

    # --- receipts ---------------------------------------------------------------------------
    def settle(self) -> list[StoredOutcome]:
        if time.monotonic() < self._next_settle:
            return []
        self._next_settle = time.monotonic() + self.options.receipt_poll_seconds
        try:
            return self._settle_waiting()
        except RetriableError as exc:
            # Not every poll: the server or the database is away, or the host key changed.
            wait = max(exc.retry_after or 0.0, SETTLE_BACKOFF_SECONDS, self.options.receipt_poll_seconds)
            self._next_settle = time.monotonic() + wait
            raise

    def _settle_waiting(self) -> list[StoredOutcome]:
        waiting = self.uploads.waiting()
        if not waiting:
            return []
        try:
            sftp = self._session()
            present = set(sftp.listdir(self.options.remote_dir))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._drop_session()
            raise RetriableError(f"listing the mail house folder failed ({exc})") from exc
        settled: list[StoredOutcome] = []
        for upload in waiting:
            if upload.name + RECEIPT_SUFFIX in present:
                settled.extend(self._read_receipt(sftp, upload))
        return settled

    def _read_receipt(self, sftp: paramiko.SFTPClient, upload: Upload) -> list[StoredOutcome]:
        path = self._remote(upload.name + RECEIPT_SUFFIX)
        try:
            if not stat.S_ISREG(sftp.stat(path).st_mode or 0):
                return []
            buffer = io.BytesIO()
            sftp.getfo(path, buffer)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._drop_session()
            raise RetriableError(f"reading {upload.name}{RECEIPT_SUFFIX} failed ({exc})") from exc
        try:
            receipt = parse_receipt(buffer.getvalue())
        except UnreadableReceipt as why:
            log.warning(
                "mail house receipt unreadable; waiting for a good one", file=upload.name, reason=str(why)
            )
            return []
        now = self.clock.now()
        problem = disagreement(receipt, upload.name, upload.row_count, upload.sha256)
        status = "mismatch" if problem else "matched"
        self.uploads.receive(upload.name, status, problem, {} if problem else receipt.rejected, now)
        done = Upload(
            upload.name,
            upload.command_ids,
            upload.request_ids,
            upload.row_count,
            upload.sha256,
            upload.uploaded_at,
            status,
            problem,
            {} if problem else receipt.rejected,
        )
        if problem:
            log.warning(
                "mail house receipt disagrees; the file's commands are rejected",
                file=upload.name,
                reason=problem,
            )
        else:
            log.info(
                "mail house receipt", file=upload.name, rows=receipt.rows, rejected=len(receipt.rejected)
            )
        return [StoredOutcome(cid, rid, s, d, now) for cid, rid, s, d in upload_outcomes(done)]

    def close(self) -> None:
        self._drop_session()
        self.uploads.close()


def load_private_key(text: str, passphrase: str | None, where: str) -> paramiko.PKey:
    """An OpenSSH or PEM private key (Ed25519, ECDSA or RSA) from its text."""
    last: Exception | None = None
    for key_type in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_type.from_private_key(io.StringIO(text), password=passphrase)
        except (paramiko.SSHException, ValueError) as exc:
            last = exc
    raise ConfigurationError(f"{where}: private_key is not a usable private key ({last})")


def build(destination: Destination, settings: Settings) -> Connector:
    options = parse_options(SftpMailHouseOptions, destination)
    where = f"destination {destination.id!r} ({destination.kind})"
    if not Path(options.known_hosts).is_file():
        raise ConfigurationError(f"{where}: settings.known_hosts: {options.known_hosts} is not a file")
    key = require_credential(destination, "private_key")
    passphrase: SecretStr | None = destination.credentials.get("passphrase")
    pkey = load_private_key(
        key.get_secret_value(), passphrase.get_secret_value() if passphrase else None, where
    )
    return SftpMailHouseConnector(
        destination.id,
        options,
        pkey,
        UploadLog(settings.dsn(), destination.id, settings.database_prepared_statements),
    )
