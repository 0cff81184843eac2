"""Files the project writes that hold raw contact details: the mail house's daily
suppression CSVs (``<OPTOUT_MAIL_HOUSE_DIR>/<prefix>YYYY-MM-DD.csv``, names and postal
addresses) and the garbled ones the connector kept aside (``...csv.garbled-<time>``).
``optout purge`` removes those older than the retention period: a file's age is the date in
its name, or its modification time when the name carries no date. The caller names the
prefix (the connector's own), so this module does not depend on a connector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from services.common.logging import get_logger

log = get_logger(__name__)

_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class OldFile:
    path: Path
    day: date  # the day the file is about (from its name, else its mtime)


def file_day(path: Path, prefix: str) -> date:
    """The date in the file name (``suppressions-2026-12-01.csv``), else the mtime's date (UTC)."""
    match = _DATE.match(path.name.removeprefix(prefix))
    if match:
        try:
            return date.fromisoformat(match.group(1))
        except ValueError:
            pass
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).date()


def is_suppression_file(name: str, prefix: str) -> bool:
    """A day's suppression CSV, or one kept aside as garbled (it holds the same rows)."""
    return name.startswith(prefix) and (name.endswith(".csv") or ".csv.garbled-" in name)


def old_mail_house_files(folder: Path, now: datetime, retention: timedelta, prefix: str) -> list[OldFile]:
    """Suppression CSVs in ``folder`` whose day is before ``now - retention``, oldest first."""
    if not folder.is_dir():
        return []
    cutoff = (now - retention).astimezone(UTC).date()
    found = []
    for path in folder.iterdir():
        if is_suppression_file(path.name, prefix) and path.is_file():
            day = file_day(path, prefix)
            if day < cutoff:
                found.append(OldFile(path, day))
    return sorted(found, key=lambda f: (f.day, f.path.name))


def remove_old_mail_house_files(
    folder: Path, now: datetime, retention: timedelta, prefix: str, dry_run: bool = False
) -> list[OldFile]:
    """Remove (or, with ``dry_run``, only list) the suppression CSVs older than ``retention``."""
    old = old_mail_house_files(folder, now, retention, prefix)
    if not dry_run:
        for item in old:
            item.path.unlink(missing_ok=True)
        if old:
            log.info("old mail-house files removed", files=len(old), oldest=old[0].day.isoformat())
    return old
