"""The mail house's side of the SFTP exchange: imports each uploaded file and writes its
receipt, as a real mail house must (format in docs/destinations.md, "Mail house over SFTP").

It watches the SFTP inbox *on local disk* (the devstack sshd's ``root/inbox``, setting
``standin_sftp_inbox``): for every ``*.csv`` without a ``<file>.receipt`` it reads the file,
counts its data rows, rejects rows without a postal code (``{"row", "reason"}``, data rows
numbered from 1) and writes the receipt JSON ``{"file", "rows", "sha256", "imported_at",
"rejected"}`` as ``<file>.receipt.part`` renamed to ``<file>.receipt`` (never half-written).
``.part`` files (uploads in progress) are left alone.
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

log = get_logger(__name__)

RECEIPT_SUFFIX = ".receipt"
POLL_SECONDS = 0.2


def receipt_for(name: str, content: bytes, imported_at: datetime) -> dict[str, object]:
    """The receipt of one imported file (rows without a postal code, or with an ``action``
    other than OPT_OUT or OPT_IN, are rejected; files without the column are opt-outs)."""
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    rejected = []
    for number, row in enumerate(rows, start=1):
        if not (row.get("postal_code") or "").strip():
            rejected.append({"row": number, "reason": "no postal code"})
        elif (row.get("action") or "OPT_OUT") not in ("OPT_OUT", "OPT_IN"):
            rejected.append({"row": number, "reason": "unknown action"})
    return {
        "file": name,
        "rows": len(rows),
        "sha256": hashlib.sha256(content).hexdigest(),
        "imported_at": imported_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "rejected": rejected,
    }


class MailHouseSftpStandin:
    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox

    def import_once(self) -> list[str]:
        """Import every file without a receipt; the names imported."""
        done: list[str] = []
        for path in sorted(self.inbox.glob("*.csv")):
            receipt = path.with_name(path.name + RECEIPT_SUFFIX)
            if receipt.exists():
                continue
            body = receipt_for(path.name, path.read_bytes(), datetime.now(UTC))
            part = receipt.with_name(receipt.name + ".part")
            part.write_text(json.dumps(body), encoding="utf-8")
            os.replace(part, receipt)
            log.info("mail house stand-in imported a file", file=path.name, rows=body["rows"])
            done.append(path.name)
        return done

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.import_once()
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                log.warning("mail house stand-in could not import", error=str(exc))
            stop.wait(POLL_SECONDS)
