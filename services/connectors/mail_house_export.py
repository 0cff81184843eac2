"""The mail house's export: its current suppression list, published back to us as a file.

A mail house that takes our suppression files (``local_mail_house``, ``sftp_mail_house``)
publishes what it currently suppresses in ``export/suppressions-YYYYMMDD.csv`` (in the
folder we upload into, or the destination's ``export_dir``): UTF-8, RFC 4180, a header row,
one row per suppressed address, columns ``EXPORT_COLUMNS`` (by name; other columns are
ignored, order is free) with the values as we sent them. A full snapshot, not a difference;
the newest file (by the date in its name) is the one read. Documented in docs/destinations.md,
"The mail house's export".

``optout reconcile`` compares it with the suppression state by the SHA-256 of the address key
(``services.domain.validation.postal_key``: name, address lines, city, postal code and country,
lower case), the subject ``postal:<hex>`` of ``suppression_state``. A row is turned back into
that key from its cells (``postal_sha256_of_key``); where the round trip cannot be exact (more
than three address lines folded into the third, case or Unicode forms the upper-casing of our
files changes), the row is compared in its file form instead (``key_of_address``), so such
an address is neither reported missing nor unknown by mistake.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from services.common.errors import ConfigurationError, RetriableError
from services.connectors.mail_house import (
    ADDRESS_COLUMNS,
    FORMULA_STARTS,
    address_lines,
    normalize_field,
    safe_cell,
)
from services.domain.identity import sha256_hex

EXPORT_DIR = "export"
EXPORT_PREFIX = "suppressions-"
EXPORT_COLUMNS = (*ADDRESS_COLUMNS, "customer_id", "suppressed_on")
REQUIRED_COLUMNS = ("name", "address_line_1", "city", "postal_code", "country")
# The cells an address is compared by (region is not part of the address key).
KEY_COLUMNS = ("name", "address_line_1", "address_line_2", "address_line_3", "city", "postal_code", "country")
# normalize_field turns every control character into a space, so this never occurs in a cell.
SEPARATOR = "\x1f"
_NAME = re.compile(rf"^{re.escape(EXPORT_PREFIX)}(\d{{8}})\.csv$")


class UnreadableExport(Exception):
    """The export is not the documented CSV (one line: why)."""


@dataclass(frozen=True)
class Export:
    """The newest export read back: its name, when it was written (its modification time)
    and the file-form key of each row."""

    name: str
    written_at: datetime
    keys: list[str]


def export_name(day: date) -> str:
    return f"{EXPORT_PREFIX}{day.strftime('%Y%m%d')}.csv"


def newest_export(names: Iterable[str]) -> str | None:
    """The newest export among a folder's names (``.part`` files and others are ignored)."""
    found = sorted(n for n in names if _NAME.match(n))
    return found[-1] if found else None


def _unquote(value: str) -> str:
    """Undo ``safe_cell``: the ``'`` put before a cell that would start a formula."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def row_key(cells: Mapping[str, str | None]) -> str:
    """The file form of a row's address: its key cells normalized as our files write them."""
    return SEPARATOR.join(normalize_field(_unquote(cells.get(c) or "")) for c in KEY_COLUMNS)


def key_of_address(address: Mapping[str, Any]) -> str:
    """The file form of an address we send (what ``row_key`` gives for its exported row)."""
    lines = address_lines([str(x) for x in address.get("lines") or []])
    cells = [
        normalize_field(address.get("name")),
        *lines,
        normalize_field(address.get("city")),
        normalize_field(address.get("postal_code")),
        normalize_field(address.get("country")),
    ]
    return SEPARATOR.join(cells)


def postal_sha256_of_key(key: str) -> str | None:
    """The SHA-256 of the address key (``postal_key``) a file-form key stands for; None when
    the key is not one (no address line, city, postal code or country)."""
    parts = key.split(SEPARATOR)
    if len(parts) != len(KEY_COLUMNS):
        return None
    name, line_1, line_2, line_3, city, postal_code, country = parts
    lines = [line for line in (line_1, line_2, line_3) if line]
    if not lines or not city or not postal_code or not country:
        return None
    return sha256_hex("|".join([name, *lines, city, postal_code, country]).lower())


def parse_export(content: bytes) -> list[str]:
    """The file-form keys of an export's rows (``UnreadableExport`` when it is not the format)."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableExport(f"not UTF-8 (byte {exc.start})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in reader.fieldnames or []]
        if lacking := [c for c in REQUIRED_COLUMNS if c not in header]:
            raise UnreadableExport(f"the header row lacks the column(s) {', '.join(lacking)}")
        reader.fieldnames = header
        return [row_key(row) for row in reader if any((v or "").strip() for v in row.values() if v)]
    except csv.Error as exc:
        raise UnreadableExport(f"not readable as CSV ({exc})") from None


def render_export(rows: Sequence[Mapping[str, str]]) -> bytes:
    """An export file with ``rows`` (cells by ``EXPORT_COLUMNS`` name; missing ones empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow([safe_cell(_unquote(row.get(c) or "")) for c in EXPORT_COLUMNS])
    return buffer.getvalue().encode("utf-8")


def read_folder_export(folder: Path, destination: str) -> Export:
    """The newest export in ``folder`` on local disk (a ``local_mail_house``'s
    ``<folder>/export``); ``ConfigurationError`` when there is none or it is unreadable."""
    name = newest_export(p.name for p in folder.iterdir()) if folder.is_dir() else None
    if name is None:
        raise ConfigurationError(
            f"destination {destination!r}: the mail house has published no export "
            f"(no suppressions-YYYYMMDD.csv in {folder}; see docs/destinations.md)"
        )
    try:
        written = (folder / name).stat().st_mtime
        keys = parse_export((folder / name).read_bytes())
    except OSError as exc:
        raise RetriableError(f"reading the mail house's export failed ({exc.strerror or exc})") from exc
    except UnreadableExport as why:
        raise ConfigurationError(f"destination {destination!r}: {folder / name}: {why}") from None
    return Export(name, datetime.fromtimestamp(written, UTC), keys)
