"""The mail house's day file as this process last wrote it is not read back: a batch is a
kernel copy plus its rows (same CPU and memory on the day's millionth row as on its first).
A retried batch still adds no row twice; a file changed by anyone else is read back."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.clock import ManualClock
from services.connectors import mail_house as mh
from services.connectors.kit import Command
from tests.support.commands import make_command
from tests.support.pipeline import ADDRESS

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


def cmd() -> Command:
    return make_command(NOW, "mail_house", postal_address=ADDRESS, scopes=["POSTAL_MARKETING"])


def _ids(path: Path) -> list[str]:
    return [r["command_id"] for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))]


def test_batches_append_without_reading_the_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector = mh.MailHouseConnector(tmp_path, ManualClock(NOW))
    path = connector.path_for(NOW.date())
    first, second, third = [cmd() for _ in range(2)], [cmd()], [cmd(), cmd()]
    connector.apply(first)

    def no_reading(*_args: object) -> bytes:
        raise AssertionError("the day's file was read back")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    connector.apply(second)
    connector.apply(third)
    connector.apply(third)  # a retried batch (its outcomes were not recorded): no second row
    monkeypatch.undo()
    assert _ids(path) == [c.command_id for c in [*first, *second, *third]]
    assert path.read_bytes().count(b"request_id,command_id") == 1  # one header


def test_a_file_changed_by_someone_else_is_read_back(tmp_path: Path) -> None:
    connector = mh.MailHouseConnector(tmp_path, ManualClock(NOW))
    path = connector.path_for(NOW.date())
    first = cmd()
    connector.apply([first])
    other = mh.MailHouseConnector(tmp_path, ManualClock(NOW))  # another instance, same folder
    late = cmd()
    other.apply([late])
    connector.apply([late, cmd()])  # knows nothing of ``late`` but reads the changed file
    assert _ids(path).count(late.command_id) == 1
    assert len(_ids(path)) == 3


def test_an_id_the_filter_may_hold_is_checked_against_the_file(tmp_path: Path) -> None:
    """A "maybe" of the Bloom filter: the file says whether the row is there."""
    connector = mh.MailHouseConnector(tmp_path, ManualClock(NOW))
    path = connector.path_for(NOW.date())
    written, fresh = cmd(), cmd()
    connector.apply([written])
    assert connector._last is not None
    connector._last.seen.add(fresh.command_id)  # as if its hashes collided with others
    connector.apply([written, fresh])
    assert _ids(path) == [written.command_id, fresh.command_id]


def test_seen_ids_never_forgets_an_id() -> None:
    seen = mh.SeenIds(f"id-{i}" for i in range(1000))
    assert all(seen.may_hold(f"id-{i}") for i in range(1000))
    assert sum(seen.may_hold(f"other-{i}") for i in range(1000)) <= 1
