"""``optout purge`` removes mail-house files older than the retention period."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.connectors.mail_house import FILE_PREFIX
from services.retention.files import file_day, remove_old_mail_house_files

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _touch(folder: Path, name: str, mtime: datetime | None = None) -> Path:
    path = folder / name
    path.write_text("request_id,command_id\r\n")
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def test_files_older_than_the_retention_period_go_by_the_date_in_their_name(tmp_path: Path) -> None:
    # Names decide, not mtimes: every file is "new" on disk.
    old = _touch(tmp_path, "suppressions-2026-08-31.csv")
    edge = _touch(tmp_path, "suppressions-2026-09-01.csv")  # exactly 91 days: kept (cutoff 2026-09-01)
    recent = _touch(tmp_path, "suppressions-2026-11-30.csv")
    lock = _touch(tmp_path, ".suppressions.lock", mtime=NOW - timedelta(days=400))
    other = _touch(tmp_path, "notes-2020-01-01.csv", mtime=NOW - timedelta(days=400))

    would = remove_old_mail_house_files(tmp_path, NOW, timedelta(days=91), FILE_PREFIX, dry_run=True)
    assert [f.path for f in would] == [old]
    assert old.exists()

    removed = remove_old_mail_house_files(tmp_path, NOW, timedelta(days=91), FILE_PREFIX)
    assert [f.path for f in removed] == [old]
    assert not old.exists()
    assert edge.exists() and recent.exists() and lock.exists() and other.exists()
    assert remove_old_mail_house_files(tmp_path, NOW, timedelta(days=91), FILE_PREFIX) == []


def test_a_file_whose_name_has_no_date_goes_by_its_mtime(tmp_path: Path) -> None:
    stale = _touch(tmp_path, "suppressions-manual-export.csv", mtime=NOW - timedelta(days=100))
    fresh = _touch(tmp_path, "suppressions-rerun.csv", mtime=NOW - timedelta(days=2))
    bad_date = _touch(tmp_path, "suppressions-2026-13-45.csv", mtime=NOW - timedelta(days=95))
    assert file_day(stale, FILE_PREFIX) == (NOW - timedelta(days=100)).date()
    removed = remove_old_mail_house_files(tmp_path, NOW, timedelta(days=90), FILE_PREFIX)
    assert sorted(f.path.name for f in removed) == sorted([stale.name, bad_date.name])
    assert fresh.exists()


def test_a_missing_folder_is_nothing_to_remove(tmp_path: Path) -> None:
    assert remove_old_mail_house_files(tmp_path / "absent", NOW, timedelta(days=90), FILE_PREFIX) == []


def test_garbled_files_kept_aside_go_with_their_day(tmp_path: Path) -> None:
    # The connector renames a day's unreadable file aside; it holds the same raw rows.
    old = _touch(tmp_path, "suppressions-2026-08-01.csv.garbled-20260801T101010Z")
    recent = _touch(tmp_path, "suppressions-2026-11-30.csv.garbled-20261130T101010Z")
    removed = remove_old_mail_house_files(tmp_path, NOW, timedelta(days=90), FILE_PREFIX)
    assert [f.path for f in removed] == [old]
    assert recent.exists()
