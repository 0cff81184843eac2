"""A hand-edited or garbled day's mail-house file (issue #10, pipeline): never a crash, never
a lost row. The file is kept aside with every byte it held, a warning says so, and a new
day's file is started with the batch's rows."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from prometheus_client import REGISTRY

from services.common.clock import ManualClock
from services.common.contract import AckStatus
from services.connectors import mail_house as mh
from services.connectors.kit import Command
from tests.support.commands import make_command
from tests.support.logcapture import capture_all_logs
from tests.support.pipeline import ADDRESS

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


def cmd() -> Command:
    return make_command(NOW, "mail_house", postal_address=ADDRESS, scopes=["POSTAL_MARKETING"])


def good_file(commands: list[Command]) -> bytes:
    plan = mh.plan_file(b"", commands, NOW.date())
    assert plan.content is not None
    return plan.content


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


GARBLED = {
    "not utf-8": lambda ok: ok + b"\xff\xfe\xfa broken bytes\r\n",
    "another header": lambda ok: ok.replace(b"command_id", b"Command ID", 1),
    "a row cut short": lambda ok: ok + b"evt-x,cmd-x,JANE\r\n",
    "a row with more cells": lambda ok: ok.replace(b"\r\n", b",extra\r\n", 2),
    "a spreadsheet's export": lambda ok: ok.replace(b",", b";"),
    "binary junk": lambda ok: b"\x00\x01PK\x03\x04" + bytes(range(256)),
}


@pytest.mark.parametrize("damage", list(GARBLED), ids=list(GARBLED))
def test_a_garbled_file_is_kept_aside_and_a_new_file_started(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = [cmd() for _ in range(3)]
    held = GARBLED[damage](good_file(earlier))
    path = tmp_path / mh.file_name(NOW.date())
    path.write_bytes(held)
    connector = mh.MailHouseConnector(tmp_path, ManualClock(NOW))
    batch = [cmd(), cmd()]
    before = REGISTRY.get_sample_value("optout_mail_house_garbled_files_total") or 0.0

    with capture_all_logs() as logs:
        # A fresh logger: the module's own may be cached by an earlier configure_logging.
        monkeypatch.setattr(mh, "log", structlog.get_logger(mh.__name__))
        outcomes = connector.apply(batch)  # never raises

    assert [o.status for o in outcomes] == [AckStatus.APPLIED, AckStatus.APPLIED]
    [aside] = list(tmp_path.glob(f"{path.name}{mh.GARBLED_SUFFIX}*"))
    assert aside.read_bytes() == held  # every row it held, byte for byte
    assert [r["command_id"] for r in _rows(path)] == [c.command_id for c in batch]
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["file"] == path.name and warning["kept_as"] == aside.name
    assert (REGISTRY.get_sample_value("optout_mail_house_garbled_files_total") or 0.0) == before + 1
    # The mail house imports *.csv: the kept-aside file is not one of them.
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == [path.name]

    # The new file is this connector's own format again: the next batch appends to it.
    later = [cmd()]
    connector.apply([*batch, *later])
    assert [r["command_id"] for r in _rows(path)] == [c.command_id for c in [*batch, *later]]
    assert len(list(tmp_path.glob(f"{path.name}{mh.GARBLED_SUFFIX}*"))) == 1


def test_files_that_are_still_this_format_are_not_set_aside(tmp_path: Path) -> None:
    earlier = [cmd()]
    content = good_file(earlier)
    path = tmp_path / mh.file_name(NOW.date())
    # A byte-order mark (a spreadsheet's UTF-8 save), a missing last line break, a blank line.
    path.write_bytes(b"\xef\xbb\xbf" + content.rstrip(b"\r\n") + b"\r\n\r\n")
    later = [cmd()]
    mh.MailHouseConnector(tmp_path, ManualClock(NOW)).apply([*earlier, *later])
    assert list(tmp_path.glob(f"*{mh.GARBLED_SUFFIX}*")) == []
    ids = [r["command_id"] for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))]
    assert [i for i in ids if i] == [earlier[0].command_id, later[0].command_id]


def test_command_ids_in_names_what_is_wrong() -> None:
    with pytest.raises(mh.GarbledFile, match="row 3 has 2 cells"):
        mh.command_ids_in(good_file([cmd()]) + b"a,b\r\n")
    with pytest.raises(mh.GarbledFile, match="UTF-8"):
        mh.command_ids_in(b"\xff")
