"""mail_house: the suppression file a mail house imports, one CSV per day.

``<mail_house_dir>/suppressions-YYYY-MM-DD.csv`` (UTF-8, RFC 4180, header row): request
id, command id, the normalized name and postal address (upper case, single spaces, no
control characters; up to three address-line columns, further lines folded into the
third), the date the person was added and the customer id (empty when the request named
none; where it is set, the mail house suppresses the address only if it is the address on
file for that customer), then the ``action``: ``OPT_OUT`` (suppress the address) or
``OPT_IN`` (the person opted back in: remove the address from the mail house's suppression
list). Rows are in the order they were applied here and the connector never writes a row
older than the newest already written for the person (services/connectors/kit.py), so the
mail house applies the rows of its files in order (files by day, rows top to bottom) and the
last row for an address wins. A day's file written before the ``action`` column existed is
rewritten with it (every earlier row: ``OPT_OUT``) the next time a row is added to it.

Each batch rewrites the day's file atomically: under an exclusive lock on
``.suppressions.lock``, read the current file, append the rows whose command id is not
in it yet, write everything to a temporary file in the same folder, fsync it,
``os.replace`` it over the day's file and fsync the folder. When the day's file is still
the one this process wrote last (same inode, size and modification time), it is not read
and parsed again: the temporary file is a kernel copy of it plus the new rows, and whether a
command id is in it already is answered by a Bloom filter of the file's ids in a fixed
4 MiB (``SeenIds``): "no" is certain; a "maybe" (a command re-applied after its outcome was
lost, or one in about 10,000 new ids on a day of a million rows) is checked by reading the
file's command ids as a stream. So a batch costs about the same CPU and memory on a day's
first row as on its millionth (issue #15). A crash leaves either the
old or the new file, never a half-written one; a re-applied command never adds a
second row. ``apply`` returns only after the fsyncs, so a command is acknowledged only
once its row is durable. Leftover temporary files of a crashed writer are removed on
start (under the lock). The lock is ``flock``: instances must share one local folder.

A day's file that cannot be read back as this format (hand-edited or garbled: not UTF-8,
broken CSV, another header, rows of another width) is never lost and never crashes the
connector: it is renamed aside to ``suppressions-YYYY-MM-DD.csv.garbled-<UTC time>``
(the mail house imports only ``*.csv``), a warning names both files, and a new day's file
is started. Its rows are still in the file kept aside, for an operator to repair.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import os
import shutil
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import BaseModel

from services.common.clock import Clock, SystemClock
from services.common.contract import Destination
from services.common.errors import RetriableError
from services.common.logging import get_logger
from services.common.settings import Settings
from services.connectors.kinds import OPTIONS_CONFIG, parse_options
from services.connectors.kit import Command, Connector, Outcome

log = get_logger(__name__)

# The postal address, as every file about addresses (ours, a mail house's export) writes it.
ADDRESS_COLUMNS = (
    "name",
    "address_line_1",
    "address_line_2",
    "address_line_3",
    "city",
    "region",
    "postal_code",
    "country",
)
COLUMNS = (
    "request_id",
    "command_id",
    *ADDRESS_COLUMNS,
    "suppressed_on",
    # Last, so files written before it existed keep their columns: the mail house suppresses
    # the address only where it is the one on file for this customer (docs/web.md).
    "customer_id",
    # Opting back in (issue #12): OPT_OUT or OPT_IN. Last, for the same reason.
    "action",
)
# The columns of files written before ``action`` existed (read back and upgraded).
COLUMNS_BEFORE_ACTION = COLUMNS[:-1]
ADDRESS_LINE_COLUMNS = 3
FILE_PREFIX = "suppressions-"
TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".suppressions.lock"
GARBLED_SUFFIX = ".garbled-"
GARBLED_FILES = Counter(
    "optout_mail_house_garbled_files_total",
    "Day's suppression files that could not be read back and were kept aside.",
)
# Spreadsheet programs run cells starting with these as formulas (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def file_name(day: date) -> str:
    return f"{FILE_PREFIX}{day.isoformat()}.csv"


def normalize_field(value: str | None) -> str:
    """NFC, control characters dropped, whitespace collapsed, upper case (postal style)."""
    if not value:
        return ""
    if value.isascii() and value.isprintable():  # the common case: already NFC, no controls
        return " ".join(value.split()).upper()
    text = unicodedata.normalize("NFC", value)
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(text.split()).upper()


def safe_cell(value: str) -> str:
    """Neutralise spreadsheet formulas: a leading ``'`` makes the cell plain text."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def address_lines(lines: Sequence[str]) -> list[str]:
    """Exactly three address-line cells; lines beyond the third are joined into it."""
    cleaned = [n for n in (normalize_field(line) for line in lines) if n]
    head = cleaned[: ADDRESS_LINE_COLUMNS - 1]
    tail = ", ".join(cleaned[ADDRESS_LINE_COLUMNS - 1 :])
    cells = [*head, tail] if tail else head
    return cells + [""] * (ADDRESS_LINE_COLUMNS - len(cells))


def csv_row(command: Command, address: Mapping[str, Any], day: date) -> list[str]:
    """The file row for one command (``address`` is the command's postal address)."""
    values = [
        command.request_id,
        command.command_id,
        normalize_field(address.get("name")),
        *address_lines([str(x) for x in address.get("lines") or []]),
        normalize_field(address.get("city")),
        normalize_field(address.get("region")),
        normalize_field(address.get("postal_code")),
        normalize_field(address.get("country")),
        day.isoformat(),
        command.customer_id or "",
        command.action.value,
    ]
    return [safe_cell(v) for v in values]


def render_rows(rows: Sequence[Sequence[str]], with_header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if with_header:
        writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


class GarbledFile(Exception):
    """The day's file is not in the format this connector writes."""


def command_ids_in(content: bytes) -> set[str]:
    """Command ids already in a file's content; ``GarbledFile`` when it is not this format."""
    if not content:
        return set()
    try:
        rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    except UnicodeDecodeError as exc:
        raise GarbledFile(f"not UTF-8 (byte {exc.start})") from None
    except csv.Error as exc:
        raise GarbledFile(f"not readable as CSV ({exc})") from None
    if not rows or tuple(rows[0]) not in (COLUMNS, COLUMNS_BEFORE_ACTION):
        raise GarbledFile("the header row is not the expected columns")
    width = len(rows[0])
    index = COLUMNS.index("command_id")
    ids: set[str] = set()
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line
        if len(row) != width:
            raise GarbledFile(f"row {number} has {len(row)} cells, not {width}")
        if row[index]:
            ids.add(row[index])
    return ids


def with_action_column(content: bytes) -> bytes:
    """A readable file of the format before ``action`` as today's (earlier rows: OPT_OUT);
    any other content as it is."""
    if not content.lstrip(b"\xef\xbb\xbf").startswith(",".join(COLUMNS_BEFORE_ACTION).encode() + b"\r"):
        return content
    rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    return render_rows([[*row, "OPT_OUT"] for row in rows[1:] if row], with_header=True)


@dataclass(frozen=True)
class FilePlan:
    content: bytes | None  # the day's new file; None when nothing changes
    outcomes: list[Outcome]
    rows_added: int


def plan_rows(
    present: set[str], commands: Sequence[Command], day: date
) -> tuple[list[list[str]], list[Outcome]]:
    """The rows of the commands whose id is not in ``present`` (which gains them), and every
    command's outcome."""
    rows: list[list[str]] = []
    outcomes: list[Outcome] = []
    for command in commands:
        address = command.postal_address
        if not address or not address.get("lines") or not address.get("postal_code"):
            outcomes.append(Outcome.rejected(command.command_id, "command carries no postal address"))
            continue
        if command.command_id not in present:
            rows.append(csv_row(command, address, day))
            present.add(command.command_id)
        outcomes.append(Outcome.applied(command.command_id))
    return rows, outcomes


def plan_file(existing: bytes, commands: Sequence[Command], day: date) -> FilePlan:
    """The day's file with the commands not in it yet, and every command's outcome
    (``GarbledFile`` when ``existing`` is not this format)."""
    rows, outcomes = plan_rows(command_ids_in(existing), commands, day)
    if not rows:
        return FilePlan(None, outcomes, 0)
    existing = with_action_column(existing)
    if existing and not existing.endswith(b"\n"):
        existing += b"\r\n"
    return FilePlan(existing + render_rows(rows, with_header=not existing), outcomes, len(rows))


def write_atomically(path: Path, content: bytes, *, after_copy_of: Path | None = None) -> None:
    """Temporary file in the same folder (starting as a kernel copy of ``after_copy_of``, if
    given), ``content`` written, fsync, rename over ``path``, fsync the folder."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        if after_copy_of is not None:
            shutil.copyfile(after_copy_of, temp)
        with open(temp, "wb" if after_copy_of is None else "ab") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def append_atomically(path: Path, rows: bytes) -> None:
    """``path`` plus ``rows`` (it ends with a line break: this connector wrote it), replaced
    as ``write_atomically`` does, from a kernel copy: memory does not grow with the file."""
    write_atomically(path, rows, after_copy_of=path)


class SeenIds:
    """The command ids of a day's file in a fixed 4 MiB (a Bloom filter, 4 hashes): ``may_hold``
    is False only for an id surely not in the file (about 1 in 10,000 false "maybe"s at a
    million ids)."""

    BITS = 1 << 25
    HASHES = 4

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.bits = bytearray(self.BITS // 8)
        for command_id in ids:
            self.add(command_id)

    def _positions(self, command_id: str) -> list[int]:
        digest = hashlib.blake2b(command_id.encode(), digest_size=4 * self.HASHES).digest()
        return [int.from_bytes(digest[4 * i : 4 * i + 4], "little") % self.BITS for i in range(self.HASHES)]

    def add(self, command_id: str) -> None:
        for position in self._positions(command_id):
            self.bits[position >> 3] |= 1 << (position & 7)

    def may_hold(self, command_id: str) -> bool:
        return all(self.bits[p >> 3] & (1 << (p & 7)) for p in self._positions(command_id))


def ids_in_file(path: Path, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` are command ids in ``path`` (a file this connector wrote), read as a
    stream: memory does not grow with the file."""
    index = COLUMNS.index("command_id")
    found: set[str] = set()
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for row in csv.reader(handle):
            if len(row) > index and row[index] in wanted:
                found.add(row[index])
    return found


@dataclass
class LastWritten:
    """The day's file as this process last wrote it, and the command ids it holds."""

    path: Path
    signature: tuple[int, int, int]  # st_ino, st_size, st_mtime_ns
    seen: SeenIds

    def matches(self, path: Path) -> bool:
        return path == self.path and _signature(path) == self.signature


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class MailHouseConnector(Connector):
    destination = "mail_house"

    def __init__(self, folder: Path, clock: Clock | None = None, destination: str = "mail_house") -> None:
        self.destination = destination  # the destination's name in the destinations file
        self.folder = folder
        self.clock = clock or SystemClock()
        self._cleaned = False
        self._last: LastWritten | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MailHouseConnector:
        return cls(Path(settings.mail_house_dir))

    def path_for(self, day: date) -> Path:
        return self.folder / file_name(day)

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        day = self.clock.now().date()
        path = self.path_for(day)
        try:
            with self._locked():
                if not self._cleaned:
                    self._remove_leftovers()
                    self._cleaned = True
                plan = self._write(path, commands, day)
        except OSError as exc:
            raise RetriableError(f"mail house folder not writable ({exc.strerror or exc})") from exc
        log.info("suppression file written", file=path.name, rows_added=plan.rows_added)
        return plan.outcomes

    def _write(self, path: Path, commands: Sequence[Command], day: date) -> FilePlan:
        """Add the commands' rows to the day's file (under the lock); remember what was written."""
        last = self._last
        self._last = None
        if last is not None and last.matches(path):
            seen = last.seen
            maybe = {c.command_id for c in commands if seen.may_hold(c.command_id)}
            rows, outcomes = plan_rows(ids_in_file(path, maybe) if maybe else set(), commands, day)
            plan = FilePlan(None, outcomes, len(rows))
            if rows:
                append_atomically(path, render_rows(rows, with_header=False))
        else:
            existing = path.read_bytes() if path.exists() else b""
            try:
                plan = plan_file(existing, commands, day)
            except GarbledFile as garbled:
                self._set_aside(path, str(garbled))
                existing = b""
                plan = plan_file(existing, commands, day)
            if plan.content is not None:
                write_atomically(path, plan.content)
            seen = SeenIds(command_ids_in(plan.content if plan.content is not None else existing))
            del existing
        for command in commands:
            seen.add(command.command_id)  # rejected ones too: a "maybe" is only checked
        signature = _signature(path)
        if signature is not None:
            self._last = LastWritten(path, signature, seen)
        return plan

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK_NAME, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _set_aside(self, path: Path, why: str) -> Path:
        """Rename a garbled day's file aside (its rows are kept there); the caller starts anew."""
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.with_name(f"{path.name}{GARBLED_SUFFIX}{stamp}")
        os.replace(path, aside)
        fsync_folder(path.parent)
        GARBLED_FILES.inc()
        log.warning(
            "the day's suppression file cannot be read back (hand-edited or garbled); kept it "
            "aside with its rows and started a new file: repair and deliver the rows kept aside",
            file=path.name,
            kept_as=aside.name,
            reason=why,
        )
        return aside

    def _remove_leftovers(self) -> None:
        for leftover in self.folder.glob(f".{FILE_PREFIX}*{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            log.warning("removed a temporary file left by a crashed writer", file=leftover.name)


# --- the kind (services/connectors/kinds.py) -------------------------------------------------
KIND = "local_mail_house"


class LocalMailHouseOptions(BaseModel):
    """``[settings]`` of a ``local_mail_house`` destination; unset: OPTOUT_MAIL_HOUSE_DIR."""

    model_config = OPTIONS_CONFIG
    folder: str | None = None


def folder_of(destination: Destination, settings: Settings) -> Path:
    """The folder a ``local_mail_house`` destination writes (``optout purge`` cleans it too)."""
    options = parse_options(LocalMailHouseOptions, destination)
    return Path(options.folder or settings.mail_house_dir)


def build(destination: Destination, settings: Settings) -> Connector:
    """The connector of one ``local_mail_house`` destination (a folder the mail house reads)."""
    return MailHouseConnector(folder_of(destination, settings), destination=destination.id)
