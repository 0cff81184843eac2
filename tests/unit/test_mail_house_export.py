"""The mail house's export (issue #13): the file format, the address key it is compared by, the
stand-in mail house writing it as it imports files, and reconciliation's file-form fallback."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from services.cli.reconcile import render
from services.common.contract import Destination, Identifier, Scope
from services.common.errors import ConfigurationError
from services.connectors import mail_house_export as mx
from services.connectors import sftp_mail_house as sm
from services.domain.identity import sha256_hex
from services.domain.validation import normalize_postal_address, postal_key
from services.reconcile.drift import Drift, Expected, compare, match_file_forms
from services.reconcile.run import Report, command_records
from services.standins.mail_house_sftp import MailHouseSftpStandin
from tests.support.commands import make_command

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def address(**fields: object) -> dict[str, object]:
    raw = {
        "name": "Ada  Lovelace",
        "lines": ["12 St James's Sq", "Flat 2"],
        "city": "London",
        "region": None,
        "postal_code": "sw1y 4jh",
        "country": "gb",
        **fields,
    }
    normalized = normalize_postal_address(raw)
    assert normalized is not None
    return dict(normalized)


def exported(*addresses: dict[str, object]) -> bytes:
    """The export a mail house writes after importing our file with these addresses."""
    batch = sm.build_file([make_command(NOW, "mail_house", postal_address=a) for a in addresses], NOW.date())
    rows = list(csv.DictReader(io.StringIO(batch.content.decode())))
    return mx.render_export(rows)


def test_an_exported_row_hashes_to_the_suppression_state_subject() -> None:
    ada = address()
    (key,) = mx.parse_export(exported(ada))
    assert mx.postal_sha256_of_key(key) == sha256_hex(postal_key(ada) or "")
    assert key == mx.key_of_address(ada)


def test_a_formula_cell_and_lower_case_at_the_mail_house_still_match() -> None:
    odd = address(name="-Dash", lines=["=1+1 Road"])
    content = exported(odd)
    assert b"'-DASH" in content and b"'=1+1 ROAD" in content  # neutralised in the file
    (key,) = mx.parse_export(content.replace(b"LONDON", b"london"))
    assert mx.postal_sha256_of_key(key) == sha256_hex(postal_key(odd) or "")


def test_an_address_whose_key_does_not_survive_the_file_matches_by_its_file_form() -> None:
    long = address(lines=["1 A St", "B", "C", "D"])  # folded into three lines
    ada = address()
    keys = mx.parse_export(exported(long, ada))
    wanted = {
        sha256_hex(postal_key(a) or ""): Expected(sha256_hex(postal_key(a) or ""), ("POSTAL_MARKETING",), NOW)
        for a in (long, ada)
    }
    drift = compare(wanted, keys, Identifier.POSTAL_ADDRESS)
    assert [m.sha256 for m in drift.missing] == [sha256_hex(postal_key(long) or "")]
    assert len(drift.unknown) == 1  # the folded row, by its own hash
    fixed = match_file_forms(drift, {sha256_hex(postal_key(long) or ""): mx.key_of_address(long)}, keys)
    assert fixed.missing == [] and fixed.unknown == []


def test_the_newest_export_is_chosen_and_a_bad_one_is_refused_in_one_line(tmp_path: Path) -> None:
    names = [
        "suppressions-20261130.csv",
        "suppressions-20261201.csv",
        "suppressions-20261202.csv.part",
        "x.csv",
    ]
    assert mx.newest_export(names) == "suppressions-20261201.csv"
    assert mx.export_name(date(2026, 12, 1)) == "suppressions-20261201.csv"
    with pytest.raises(mx.UnreadableExport, match="lacks the column"):
        mx.parse_export(b"email\r\na@example.com\r\n")
    with pytest.raises(ConfigurationError, match="published no export"):
        mx.read_folder_export(tmp_path / "export", "mail_house")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "suppressions-20261201.csv").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        mx.read_folder_export(tmp_path / "export", "mail_house")


def test_the_stand_in_publishes_its_list_as_it_imports_files(tmp_path: Path) -> None:
    ada, bob = address(), address(name="Bob", lines=["1 High St"])
    first = sm.build_file([make_command(NOW, "mail_house", postal_address=a) for a in (ada, bob)], NOW.date())
    (tmp_path / "suppressions-00000001.csv").write_bytes(first.content)
    standin = MailHouseSftpStandin(tmp_path)
    assert standin.import_once() == ["suppressions-00000001.csv"]
    export = mx.read_folder_export(tmp_path / "export", "mail_house")
    assert sorted(export.keys) == sorted([mx.key_of_address(ada), mx.key_of_address(bob)])

    # Rows deleted from the export stay deleted (it IS the stand-in's list) until a file
    # suppresses them again; an OPT_IN removes the address.
    path = tmp_path / "export" / export.name
    lines = path.read_bytes().split(b"\r\n")
    path.write_bytes(b"\r\n".join([lines[0], lines[2], b""]))
    second = sm.build_file(
        [
            make_command(NOW, "mail_house", postal_address=ada),
            make_command(NOW, "mail_house", postal_address=bob, action="OPT_IN"),
        ],
        NOW.date(),
    )
    (tmp_path / "suppressions-00000002.csv").write_bytes(second.content)
    assert standin.import_once() == ["suppressions-00000002.csv"]
    assert standin.import_once() == []
    assert mx.read_folder_export(tmp_path / "export", "mail_house").keys == [mx.key_of_address(ada)]


def test_a_postal_reissue_carries_the_address_and_the_suppressing_requests_customer() -> None:
    dest = Destination(
        "mail_house",
        frozenset({Scope.POSTAL_MARKETING}),
        frozenset({Identifier.CUSTOMER_ID, Identifier.POSTAL_ADDRESS}),
        frozenset({Identifier.POSTAL_ADDRESS}),
        "sftp_mail_house",
    )
    ada, bob = address(), address(name="Bob", lines=["1 High St"])
    missing = [
        Expected(sha256_hex(postal_key(a) or ""), ("POSTAL_MARKETING",), NOW, "ev") for a in (ada, bob)
    ]
    values = {m.sha256: json.dumps(a) for m, a in zip(missing, (ada, bob), strict=True)}
    records = command_records(
        dest, Identifier.POSTAL_ADDRESS, missing, values, {}, NOW, {missing[0].sha256: "C-7"}
    )
    assert [r["postal_address"] for r in records] == [ada, bob]
    assert [r["customer_id"] for r in records] == ["C-7", None]
    assert all(r["email"] is None and r["email_sha256"] is None for r in records)
    assert all(r["request_id"].startswith("reconcile:mail_house:") for r in records)


def test_the_report_names_the_export_it_read() -> None:
    missing = Expected("ab" * 32, ("POSTAL_MARKETING",), NOW)
    drift = Drift(expected=5, present=4, missing=[missing], unknown=["cd" * 32])
    report = Report(
        "mail_house", "sftp_mail_house", NOW, drift, 1, 0, True, "suppressions-20261201.csv", NOW, 2
    )
    text = render(report)
    assert (
        "read from the export" in text
        and "suppressions-20261201.csv (written 2026-12-01 06:00:00 UTC)" in text
    )
    assert re.search(r"^suppressed after the export \(not expected\) +2$", text, re.MULTILINE)
    assert f"missing  address key sha256 {'ab' * 32}" in text
    out = report.as_json()
    assert out["export"] == "suppressions-20261201.csv" and out["newer_than_export"] == 2
