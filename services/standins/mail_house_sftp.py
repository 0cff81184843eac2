"""The mail house's side of the SFTP exchange: imports each uploaded file and writes its
receipt, as a real mail house must (format in docs/destinations.md, "Mail house over SFTP").

It watches the SFTP inbox *on local disk* (the devstack sshd's ``root/inbox``, setting
``standin_sftp_inbox``): for every ``*.csv`` without a ``<file>.receipt`` it reads the file,
counts its data rows, rejects rows without a postal code (``{"row", "reason"}``, data rows
numbered from 1) and writes the receipt JSON ``{"file", "rows", "sha256", "imported_at",
"rejected"}`` as ``<file>.receipt.part`` renamed to ``<file>.receipt`` (never half-written).
``.part`` files (uploads in progress) are left alone.

Like a real mail house it also publishes its current suppression list back (docs/destinations.md,
"The mail house's export"): ``export/suppressions-YYYYMMDD.csv`` (today, UTC) in the inbox, a
full snapshot rewritten (``.part`` then rename) after every pass that imported something. The
accepted rows of the files are applied in file order, top to bottom: ``OPT_OUT`` adds the
address (one row per address, the last row's customer id and date), ``OPT_IN`` removes it. The
newest export file IS the stand-in's list: it starts from it (so rows a test deletes from it
stay deleted until a file suppresses them again), and keeps the newest ``KEEP_EXPORTS`` files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from services.common.logging import get_logger
from services.connectors.mail_house_export import (
    EXPORT_COLUMNS,
    EXPORT_DIR,
    export_name,
    newest_export,
    render_export,
    row_key,
)

log = get_logger(__name__)

RECEIPT_SUFFIX = ".receipt"
POLL_SECONDS = 0.2
KEEP_EXPORTS = 3


def rejections(content: bytes) -> dict[int, str]:
    """Rows refused (data rows from 1 -> reason): without a postal code, or with an ``action``
    other than OPT_OUT or OPT_IN (files without the column are opt-outs)."""
    rows = csv.DictReader(io.StringIO(content.decode("utf-8-sig"), newline=""))
    refused: dict[int, str] = {}
    for number, row in enumerate(rows, start=1):
        if not (row.get("postal_code") or "").strip():
            refused[number] = "no postal code"
        elif (row.get("action") or "OPT_OUT") not in ("OPT_OUT", "OPT_IN"):
            refused[number] = "unknown action"
    return refused


def receipt_for(name: str, content: bytes, imported_at: datetime) -> dict[str, object]:
    """The receipt of one imported file."""
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    return {
        "file": name,
        "rows": len(rows),
        "sha256": hashlib.sha256(content).hexdigest(),
        "imported_at": imported_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "rejected": [{"row": row, "reason": why} for row, why in sorted(rejections(content).items())],
    }


def apply_rows(listing: dict[str, dict[str, str]], content: bytes, rejected: set[int]) -> None:
    """Apply a file's accepted rows to the list (address key -> export row), in order."""
    rows = csv.DictReader(io.StringIO(content.decode("utf-8-sig"), newline=""))
    for number, row in enumerate(rows, start=1):
        if number in rejected:
            continue
        key = row_key(row)
        if (row.get("action") or "OPT_OUT") == "OPT_IN":
            listing.pop(key, None)
        else:
            listing.pop(key, None)  # the newest row last
            listing[key] = {c: row.get(c) or "" for c in EXPORT_COLUMNS}


def read_export(content: bytes) -> dict[str, dict[str, str]]:
    rows = csv.DictReader(io.StringIO(content.decode("utf-8-sig"), newline=""))
    return {row_key(row): {c: row.get(c) or "" for c in EXPORT_COLUMNS} for row in rows}


class MailHouseSftpStandin:
    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self.exports = inbox / EXPORT_DIR

    def import_once(self) -> list[str]:
        """Import every file without a receipt; the names imported. The export is written
        before the receipts, so a file with a receipt is in it."""
        imported: list[tuple[Path, dict[str, object]]] = []
        listing: dict[str, dict[str, str]] | None = None
        for path in sorted(self.inbox.glob("*.csv")):
            receipt = path.with_name(path.name + RECEIPT_SUFFIX)
            if receipt.exists():
                continue
            content = path.read_bytes()
            body = receipt_for(path.name, content, datetime.now(UTC))
            if listing is None:
                listing = self._current_list()
            apply_rows(listing, content, set(rejections(content)))
            imported.append((receipt, body))
        if listing is not None:
            self._write_export(listing)
        for receipt, body in imported:
            part = receipt.with_name(receipt.name + ".part")
            part.write_text(json.dumps(body), encoding="utf-8")
            os.replace(part, receipt)
            log.info("mail house stand-in imported a file", file=body["file"], rows=body["rows"])
        return [str(body["file"]) for _, body in imported]

    def _current_list(self) -> dict[str, dict[str, str]]:
        newest = newest_export(p.name for p in self.exports.glob("*.csv")) if self.exports.is_dir() else None
        return read_export((self.exports / newest).read_bytes()) if newest else {}

    def _write_export(self, listing: dict[str, dict[str, str]]) -> None:
        self.exports.mkdir(exist_ok=True)
        path = self.exports / export_name(datetime.now(UTC).date())
        part = path.with_name(path.name + ".part")
        part.write_bytes(render_export(list(listing.values())))
        os.replace(part, path)
        for old in sorted(p.name for p in self.exports.glob("*.csv"))[:-KEEP_EXPORTS]:
            (self.exports / old).unlink(missing_ok=True)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.import_once()
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                log.warning("mail house stand-in could not import", error=str(exc))
            stop.wait(POLL_SECONDS)
