"""The SFTP mail house's pure parts: file names and sequence, the file, receipts and what
they make of the commands, and the kit's ``Awaiting`` (issue #11)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common.clock import ManualClock
from services.common.contract import AckStatus, Destination
from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.connectors import sftp_mail_house as sm
from services.connectors.dedupe import StoredOutcome
from services.connectors.kit import Awaiting, Command, Connector, Outcome, apply_once
from services.standins.mail_house_sftp import receipt_for
from tests.support.commands import make_command
from tests.support.fake_kafka import FakeBroker, FakeProducer
from tests.unit.test_steps import CODEC, FakeDedupeStore, _acks, _command, _connector_step, _messages

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
ADDRESS = {
    "name": "Ada Lovelace",
    "lines": ["12 St James's Sq"],
    "city": "London",
    "region": None,
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


def _postal(**fields: object) -> Command:
    return make_command(NOW, "mail_house", postal_address={**ADDRESS, **fields}, customer_id="C-1")


def test_file_names_are_zero_padded_and_the_sequence_follows_the_listing_and_the_record():
    assert sm.file_name("suppressions-", 42) == "suppressions-00000042.csv"
    assert sm.sequence_of("suppressions-", "suppressions-00000042.csv.receipt") == 42
    assert sm.sequence_of("suppressions-", "suppressions-00000007.csv.part") == 7
    assert sm.sequence_of("suppressions-", "other-00000042.csv") is None
    assert sm.next_sequence("suppressions-", [], None) == 1
    listing = ["suppressions-00000003.csv", "suppressions-00000004.csv.part", "notes.txt"]
    assert sm.next_sequence("suppressions-", listing, 2) == 5  # a crash left .part 4
    assert sm.next_sequence("suppressions-", listing, 9) == 10  # the server's folder was emptied


def test_the_file_has_the_mail_house_columns_and_its_receipt_matches():
    commands = [_postal(), _postal(postal_code="")]
    batch = sm.build_file(commands, NOW.date())
    rows = list(csv.DictReader(io.StringIO(batch.content.decode())))
    assert [r["command_id"] for r in rows] == [c.command_id for c in commands]
    assert rows[0]["name"] == "ADA LOVELACE" and rows[0]["customer_id"] == "C-1"
    receipt = sm.parse_receipt(json.dumps(receipt_for("f.csv", batch.content, NOW)).encode())
    assert receipt.sha256 == hashlib.sha256(batch.content).hexdigest()
    assert sm.disagreement(receipt, "f.csv", 2, batch.sha256) is None
    assert receipt.rejected == {2: "no postal code"}  # the stand-in refuses the second row


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"file": "f.csv", "rows": "2", "sha256": "ab"}', "rows"),
        (b'{"file": "f.csv", "rows": 2, "sha256": "ab", "rejected": [{"row": "1"}]}', "rejected"),
    ],
)
def test_a_receipt_that_is_not_the_documented_json_is_unreadable(body: bytes, why: str):
    with pytest.raises(sm.UnreadableReceipt, match=why):
        sm.parse_receipt(body)


def test_a_receipt_that_disagrees_says_how():
    receipt = sm.Receipt("f.csv", 3, "ab", {})
    assert "counts 3 rows, 2 were sent" in (sm.disagreement(receipt, "f.csv", 2, "ab") or "")
    assert "checksum differs" in (sm.disagreement(receipt, "f.csv", 3, "cd") or "")
    assert "names file 'f.csv', not 'g.csv'" in (sm.disagreement(receipt, "g.csv", 3, "ab") or "")
    out_of_range = sm.Receipt("f.csv", 3, "ab", {4: "bad"})
    assert "rejects row 4" in (sm.disagreement(out_of_range, "f.csv", 3, "ab") or "")


def _upload(
    status: str | None, detail: str | None = None, rejected: dict[int, str] | None = None
) -> sm.Upload:
    return sm.Upload("f.csv", ("c1", "c2"), ("r1", "r2"), 2, "ab", NOW, status, detail, rejected or {})


def test_a_matched_receipt_applies_every_row_but_the_rejected_ones():
    outcomes = sm.upload_outcomes(_upload("matched", rejected={2: "no postal code"}))
    assert outcomes == [
        ("c1", "r1", AckStatus.APPLIED, "receipt for f.csv"),
        ("c2", "r2", AckStatus.REJECTED, "mail house: no postal code"),
    ]


def test_a_mismatched_receipt_rejects_every_command_with_the_reason():
    outcomes = sm.upload_outcomes(_upload("mismatch", detail="mail house receipt counts 3 rows"))
    assert {(cid, status, detail) for cid, _, status, detail in outcomes} == {
        ("c1", AckStatus.REJECTED, "mail house receipt counts 3 rows"),
        ("c2", AckStatus.REJECTED, "mail house receipt counts 3 rows"),
    }


class _Handing(Connector):
    destination = "mail_house"

    def apply(self, commands: Sequence[Command]) -> list[Outcome | Awaiting]:
        return [Awaiting(commands[0].command_id), Outcome.applied(commands[1].command_id)]


def test_awaiting_commands_are_neither_acknowledged_nor_retried():
    commands = [_postal(), _postal(), _postal()]
    run = apply_once(_Handing(), commands[:2], ManualClock(NOW))
    assert run.error is None and run.awaiting == {commands[0].command_id}
    assert set(run.outcomes) == {commands[1].command_id}
    # A command with neither an outcome nor Awaiting is still retried.
    run = apply_once(_Handing(), [commands[0], commands[1], commands[2]], ManualClock(NOW))
    assert run.error is not None and "no outcome for 1" in str(run.error)


class _Confirming(Connector):
    """Hands every command over; confirms them when told to."""

    destination = "email_provider"

    def __init__(self) -> None:
        self.confirm: list[StoredOutcome] = []

    def apply(self, commands: Sequence[Command]) -> list[Outcome | Awaiting]:
        return [Awaiting(c.command_id) for c in commands]

    def settle(self) -> list[StoredOutcome]:
        confirmed, self.confirm = self.confirm, []
        return confirmed


def test_the_step_acknowledges_awaiting_commands_only_when_settle_confirms_them():
    producer, store, connector = FakeProducer(FakeBroker()), FakeDedupeStore(), _Confirming()
    step = _connector_step(connector, producer, store)
    a = _command()
    step.submit(
        _messages(step.settings.suppress_topic("email_provider"), [CODEC.encode("SuppressionCommand", a)])
    )
    step.poll()
    assert _acks(producer, step.settings) == [] and store.rows == {}  # handed over, not confirmed
    connector.confirm = [StoredOutcome(a["command_id"], a["request_id"], AckStatus.APPLIED, "receipt", NOW)]
    step.poll()
    [ack] = _acks(producer, step.settings)
    assert (ack["command_id"], ack["status"]) == (a["command_id"], "APPLIED")
    assert producer.to(step.settings.acks_topic)[0].key == a["request_id"].encode()
    assert set(store.rows) == {a["command_id"]}  # a re-send is answered from the store


def _destination(tmp_path: Path, **credentials: str) -> Destination:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    return Destination(
        id="mail_house_eu",
        scopes=frozenset(),
        identifiers=frozenset(),
        requires_one_of=frozenset(),
        kind=sm.KIND,
        options={
            "host": "sftp.example",
            "username": "us",
            "remote_dir": "/in",
            "known_hosts": str(known_hosts),
        },
        credentials={k: SecretStr(v) for k, v in credentials.items()},
    )


@pytest.mark.parametrize(
    ("credentials", "why"),
    [
        ({}, "needs credential 'private_key'"),
        ({"private_key": "not a key"}, "private_key is not a usable private key"),
    ],
)
def test_build_refuses_bad_credentials_in_one_line(tmp_path: Path, credentials: dict[str, str], why: str):
    with pytest.raises(ConfigurationError, match=why) as refused:
        sm.build(_destination(tmp_path, **credentials), Settings())
    assert "\n" not in str(refused.value) and "mail_house_eu" in str(refused.value)


def test_build_refuses_a_missing_known_hosts_file(tmp_path: Path):
    destination = _destination(tmp_path)
    options = {**destination.options, "known_hosts": str(tmp_path / "absent")}
    with pytest.raises(ConfigurationError, match=r"settings.known_hosts: .*absent is not a file"):
        sm.build(dataclasses.replace(destination, options=options), Settings())
