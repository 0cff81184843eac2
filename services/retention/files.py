"""Files the project writes that hold raw contact details: the mail house's daily
suppression CSVs (``<OPTOUT_MAIL_HOUSE_DIR>/suppressions-YYYY-MM-DD.csv``, names and postal
addresses). ``optout purge`` removes those older than the retention period: a file's age is
the date in its name, or its modification time when the name carries no date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from services.common.logging import get_logger
from services.connectors.mail_house import FILE_PREFIX

log = get_logger(__name__)

_DATED = re.compile(rf"^{re.escape(FILE_PREFIX)}(\d{{4}}-\d{{2}}-\d{{2}})")


@dataclass(frozen=True)
class OldFile:
    path: Path
    day: date  # the day the file is about (from its name, else its mtime)


def file_day(path: Path) -> date:
    """The date in the file name (``suppressions-2026-12-01.csv``), else the mtime's date (UTC)."""
    match = _DATED.match(path.name)
    if match:
        try:
            return date.fromisoformat(match.group(1))
        except ValueError:
            pass
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).date()


def old_mail_house_files(folder: Path, now: datetime, retention: timedelta) -> list[OldFile]:
    """Suppression CSVs in ``folder`` whose day is before ``now - retention``, oldest first."""
    if not folder.is_dir():
        return []
    cutoff = (now - retention).astimezone(UTC).date()
    found = []
    for path in folder.iterdir():
        if path.name.startswith(FILE_PREFIX) and path.name.endswith(".csv") and path.is_file():
            day = file_day(path)
            if day < cutoff:
                found.append(OldFile(path, day))
    return sorted(found, key=lambda f: (f.day, f.path.name))


def remove_old_mail_house_files(
    folder: Path, now: datetime, retention: timedelta, dry_run: bool = False
) -> list[OldFile]:
    """Remove (or, with ``dry_run``, only list) the suppression CSVs older than ``retention``."""
    old = old_mail_house_files(folder, now, retention)
    if not dry_run:
        for item in old:
            item.path.unlink(missing_ok=True)
        if old:
            log.info("old mail-house files removed", files=len(old), oldest=old[0].day.isoformat())
    return old
