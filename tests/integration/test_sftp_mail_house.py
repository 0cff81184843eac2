"""The SFTP mail house against the real OpenSSH sshd of the local stack, the real broker
and database: files uploaded and renamed, acks only on receipts, mismatches rejected, the
host key pinned (issue #11)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from services.common.contract import Destination
from services.common.settings import Settings
from services.connectors import sftp_mail_house as sm
from services.connectors.kit import Command, CredentialsRefused, run_connector
from services.devstack.sshd_server import SftpInfo
from services.standins.mail_house_sftp import MailHouseSftpStandin
from tests.integration.test_connectors import acks_by_command, commands, publish
from tests.support.pipeline import isolated_settings, read_topic, running, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Inbox:
    sftp: SftpInfo
    local: Path  # this test's folder on the server's disk
    remote: str  # the same folder as the connector sees it


@pytest.fixture
def inbox(stack: Any) -> Iterator[Inbox]:
    yield fresh_inbox(stack)


def fresh_inbox(stack: Any) -> Inbox:
    """A fresh folder in the stack's SFTP inbox, writable by the SFTP login."""
    sftp: SftpInfo | None = stack.sftp
    if sftp is None:
        pytest.skip("OPTOUT_SFTP_HOST names an external server: no local inbox to test with")
    name = f"t{uuid.uuid4().hex[:10]}"
    local = sftp.local_dir / name
    local.mkdir()
    owner = sftp.local_dir.stat()
    os.chown(local, owner.st_uid, owner.st_gid)
    return Inbox(sftp, local, f"{sftp.remote_dir}/{name}")


def destination(box: Inbox, known_hosts: Path | None = None, **options: Any) -> Destination:
    return Destination(
        id="mail_house",
        scopes=Settings().destinations["mail_house"].scopes,
        identifiers=Settings().destinations["mail_house"].identifiers,
        requires_one_of=Settings().destinations["mail_house"].requires_one_of,
        kind=sm.KIND,
        options={
            "host": box.sftp.host,
            "port": box.sftp.port,
            "username": box.sftp.username,
            "remote_dir": box.remote,
            "known_hosts": str(known_hosts or box.sftp.known_hosts),
            "receipt_poll_seconds": 0.1,
            **options,
        },
        credentials={"private_key": SecretStr(box.sftp.private_key.read_text())},
    )


def runner(box: Inbox, **options: Any) -> Any:
    def run(settings: Settings, stop: threading.Event) -> None:
        run_connector(settings, sm.build(destination(box, **options), settings), stop)

    return run


def csv_files(box: Inbox) -> list[str]:
    return sorted(p.name for p in box.local.iterdir() if p.name.endswith(".csv"))


# These tests expect the commands published before the connector starts to be one batch,
# so one file: one partition, and a batch that waits up to 2 s for more after its first
# message (a batch starts with its first message; a 50 ms linger split them on a busy
# machine, the first partitions' messages in one file and the rest in a second).
ONE_BATCH: dict[str, Any] = {"batch_size": 10, "topic_partitions": 1, "batch_linger_ms": 2000}


def test_a_batch_is_uploaded_and_acknowledged_only_on_its_receipt(
    base_settings: dict[str, Any], inbox: Inbox
) -> None:
    cfg = isolated_settings(base_settings, **ONE_BATCH)
    batch = commands("mail_house", 3)
    publish(cfg, "mail_house", batch)
    with running(runner(inbox), cfg, "sftp_mail_house"):
        wait_until(lambda: csv_files(inbox) == ["suppressions-00000001.csv"], 30, message="file uploaded")
        assert [p.name for p in inbox.local.iterdir() if p.name.endswith(".part")] == []
        assert read_topic(cfg, cfg.acks_topic) == []  # no receipt, no ack
        assert MailHouseSftpStandin(inbox.local).import_once() == ["suppressions-00000001.csv"]
        acks = acks_by_command(read_topic(cfg, cfg.acks_topic, expect=3))
    assert set(acks) == {c["command_id"] for c in batch}
    assert {a[0]["status"] for a in acks.values()} == {"APPLIED"}
    rows = (inbox.local / "suppressions-00000001.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("request_id,command_id,name")
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute("SELECT row_count, receipt_status FROM sftp_uploads").fetchone()
    assert row == (3, "matched")


def test_a_receipt_that_disagrees_rejects_the_files_commands(
    base_settings: dict[str, Any], inbox: Inbox
) -> None:
    cfg = isolated_settings(base_settings, **ONE_BATCH)
    batch = commands("mail_house", 2)
    publish(cfg, "mail_house", batch)
    with running(runner(inbox), cfg, "sftp_mail_house"):
        wait_until(lambda: csv_files(inbox) == ["suppressions-00000001.csv"], 30, message="file uploaded")
        receipt = {"file": "suppressions-00000001.csv", "rows": 5, "sha256": "0" * 64, "rejected": []}
        (inbox.local / "suppressions-00000001.csv.receipt").write_text(json.dumps(receipt))
        acks = acks_by_command(read_topic(cfg, cfg.acks_topic, expect=2))
    assert {a[0]["status"] for a in acks.values()} == {"REJECTED"}
    assert all("counts 5 rows, 2 were sent" in a[0]["detail"] for a in acks.values())


def test_without_a_receipt_nothing_is_acknowledged_and_a_late_resend_goes_in_a_new_file(
    base_settings: dict[str, Any], inbox: Inbox
) -> None:
    cfg = isolated_settings(base_settings, **ONE_BATCH)
    batch = commands("mail_house", 2)
    publish(cfg, "mail_house", batch)
    with running(runner(inbox, receipt_timeout_seconds=0.2), cfg, "sftp_mail_house"):
        wait_until(lambda: csv_files(inbox) == ["suppressions-00000001.csv"], 30, message="first file")
        wait_until(lambda: _uploads_older_than(cfg, 0.2) == 1, 30, message="receipt overdue")
        publish(cfg, "mail_house", batch)  # the sweeper re-sends: no receipt in time
        wait_until(lambda: len(csv_files(inbox)) == 2, 30, message="second file")
        assert read_topic(cfg, cfg.acks_topic) == []
    first, second = (inbox.local / name for name in csv_files(inbox))
    assert first.read_text().count("\n") == second.read_text().count("\n") == 3  # the same two rows


def _uploads_older_than(cfg: Settings, seconds: float) -> int:
    with psycopg.connect(cfg.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sftp_uploads WHERE uploaded_at < now() - make_interval(secs => %s)",
            (seconds,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_changed_host_key_is_refused_like_bad_credentials(
    base_settings: dict[str, Any], inbox: Inbox, tmp_path: Path
) -> None:
    cfg = isolated_settings(base_settings)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
    pinned = tmp_path / "known_hosts"
    pinned.write_text(f"[{inbox.sftp.host}]:{inbox.sftp.port} {kind} {key}\n")
    connector = sm.build(destination(inbox, known_hosts=pinned), cfg)
    record = commands("mail_house", 1)[0]
    command = Command.from_record(record)
    try:
        with pytest.raises(CredentialsRefused, match="not the one pinned"):
            connector.apply([command])
    finally:
        connector.close()
    assert csv_files(inbox) == []


def test_files_are_written_as_part_then_renamed_past_a_crashed_upload(
    base_settings: dict[str, Any], inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = isolated_settings(base_settings)
    (inbox.local / "suppressions-00000001.csv.part").write_text("half a file")  # a crash left it
    connector = sm.build(destination(inbox), cfg)
    assert isinstance(connector, sm.SftpMailHouseConnector)
    session = connector._session()
    calls: list[tuple[str, ...]] = []
    real_open, real_rename = session.open, session.rename
    monkeypatch.setattr(
        session, "open", lambda path, mode: calls.append(("open", path)) or real_open(path, mode)
    )
    monkeypatch.setattr(
        session, "rename", lambda old, new: calls.append(("rename", old, new)) or real_rename(old, new)
    )
    try:
        connector.apply([Command.from_record(r) for r in commands("mail_house", 2)])
    finally:
        connector.close()
    final = f"{inbox.remote}/suppressions-00000002.csv"
    assert calls == [("open", final + ".part"), ("rename", final + ".part", final)]
    assert sorted(p.name for p in inbox.local.iterdir()) == [
        "suppressions-00000001.csv.part",
        "suppressions-00000002.csv",
    ]
