"""The customer directory's CSV format, the merge of a request's identifiers with the
directory's, and the commands an enriched request plans. Pure: no broker, no database."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from services.common.contract import AckStatus
from services.common.destinations import load_destinations
from services.common.errors import ConfigurationError
from services.common.sealing import SealError
from services.common.settings import Settings
from services.confirmer.outcomes import DestinationRow, RequestRow, confirmation_record
from services.confirmer.sweeper import request_from_row
from services.directory.csv_format import parse_csv
from services.directory.store import open_entry, seal_entry
from services.domain.enrichment import (
    DirectoryEntry,
    DirectoryIndex,
    Enrichment,
    enrich,
    identifier_sources,
    postal_hash,
)
from services.domain.identity import sha256_hex
from services.domain.planning import command_id, commands_for, plan_commands
from services.domain.validation import normalize_postal_address, validate_request
from services.suppression.entries import entries_of, suppression_ring

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEFAULT = load_destinations()
HEADER = "customer_id,email,phone,name,address_line1,address_line2,city,region,postal_code,country\n"


def parse(text: str):
    return parse_csv(io.StringIO(text, newline=""), "US")


# --- the CSV format ----------------------------------------------------------------------------
def test_several_rows_per_customer_are_merged_and_normalized_like_a_request():
    parsed = parse(
        HEADER
        + "c-1, Ada@Example.COM ,(415) 555-0123,Ada  Lovelace,1 Main St,,Springfield,il,62701,us\n"
        + "c-1,ada.work@example.org,,,,,,,,\n"
        + "c-2,,+44 20 7946 0000,,,,,,,\n"
        + "c-1,ada@example.com,,,,,,,,\n"  # repeated: kept once
        + "\n"
    )
    assert parsed.errors == [] and parsed.rows == 4
    by_id = {e.customer_id: e for e in parsed.entries}
    ada = by_id["c-1"]
    assert ada.emails == ("ada@example.com", "ada.work@example.org")
    assert ada.phones == ("+14155550123",)
    [address] = ada.postal_addresses
    expected = normalize_postal_address(
        {
            "name": "Ada  Lovelace",
            "lines": ["1 Main St"],
            "city": "Springfield",
            "region": "il",
            "postal_code": "62701",
            "country": "us",
        }
    )
    assert address == expected
    assert by_id["c-2"].phones == ("+442079460000",)


def test_columns_come_in_any_order_and_case_with_a_byte_order_mark():
    parsed = parse("\ufeffEMAIL,Customer_ID\nx@example.com,c-9\n")
    assert [(e.customer_id, e.emails) for e in parsed.entries] == [("c-9", ("x@example.com",))]


def test_a_bad_row_names_its_line_and_leaves_its_customer_out():
    parsed = parse(
        HEADER
        + "c-1,ok@example.com,,,,,,,,\n"
        + 'c-2,ok2@example.com,,"Two\nLines",,,,,,\n'  # a quoted newline: the row spans lines 3-4
        + "c-1,not-an-email,,,,,,,,\n"  # line 5
        + ",x@example.com,,,,,,,,\n"  # line 6
        + "c-3,,,,1 High St,,Leeds,,LS1 1AA,\n"  # line 7: no country
        + "c-4,a@example.com\n"  # line 8: too few cells
        + "c-5,,12,,,,,,,\n"  # line 9: not a phone number
    )
    assert [str(e) for e in parsed.errors] == [
        "line 3: invalid_postal_address: name without an address",
        "line 5: invalid_email: not a single-@ address of at most 254 characters",
        "line 6: no_customer_id: customer_id is empty",
        "line 7: invalid_postal_address: country must be an ISO 3166-1 alpha-2 code",
        "line 8: wrong_column_count: 2 cells, the header has 10",
        "line 9: invalid_phone: not a possible phone number",
    ]
    assert parsed.entries == []  # c-1's other row is not imported alone
    assert parsed.skipped_customers == 5
    assert "not-an-email" not in " ".join(str(e) for e in parsed.errors)  # never the value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("email,phone\n", "no customer_id column"),
        ("customer_id,mail\n", "unknown column(s) 'mail'"),
        ("customer_id,email,EMAIL\n", "email appear more than once"),
    ],
)
def test_an_unusable_header_is_one_clear_error(text: str, message: str):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_a_file_the_csv_reader_cannot_read_imports_nothing():
    with pytest.raises(ConfigurationError, match=r"line 3: not CSV .*; nothing imported"):
        parse(HEADER + "c-1,a@example.com,,,,,,,,\n" + "c-1," + "b" * 200_000 + ",,,,,,,,\n")


def test_progress_is_reported_on_long_files():
    seen: list[int] = []
    rows = "".join(f"c-{i},u{i}@example.com\n" for i in range(25))
    parse_csv(io.StringIO("customer_id,email\n" + rows), "US", seen.append, progress_every=10)
    assert seen == [10, 20]


# --- sealing ----------------------------------------------------------------------------------
def test_a_directory_entry_is_sealed_and_bound_to_its_customer():
    ring = suppression_ring(Settings())
    entry = DirectoryEntry("c-1", ("ada@example.com",), ("+14155550123",), ())
    sealed = seal_entry(ring, entry)
    assert "ada" not in sealed and "4155550123" not in sealed
    assert open_entry(ring, "c-1", sealed) == entry
    with pytest.raises(SealError):
        open_entry(ring, "c-2", sealed)


# --- merging ----------------------------------------------------------------------------------
ADDRESS = normalize_postal_address(
    {
        "name": "Ada Lovelace",
        "lines": ["1 Main St"],
        "city": "Springfield",
        "postal_code": "62701",
        "country": "US",
    }
)
ADA = DirectoryEntry(
    "c-1", ("ada@example.com", "ada.work@example.org"), ("+14155550123",), (ADDRESS,) if ADDRESS else ()
)
BOB = DirectoryEntry("c-2", ("bob@example.com",), (), ())


def _request(**fields):
    record = {"event_id": "e-1", "scopes": ["ALL"], "source": "API", "requested_at": NOW, **fields}
    return validate_request(record, NOW, timedelta(minutes=5))


def test_a_customer_id_alone_gets_every_identifier_on_file():
    request = enrich(_request(customer_id="c-1"), DirectoryIndex([ADA, BOB]))
    assert request.enrichment is not None
    assert request.enrichment.customer_ids == ("c-1",)
    assert set(request.enrichment.emails) == {"ada@example.com", "ada.work@example.org"}
    assert list(request.enrichment.emails) == sorted(request.enrichment.emails, key=sha256_hex)
    assert request.enrichment.phones == ("+14155550123",)
    assert request.enrichment.postal_addresses == (ADDRESS,)


def test_an_email_finds_its_customer_and_is_not_repeated():
    request = enrich(_request(email="ADA@example.com"), DirectoryIndex([ADA, BOB]))
    assert request.enrichment is not None
    assert request.enrichment.emails == ("ada.work@example.org",)
    assert request.enrichment.customer_ids == ("c-1",)


def test_the_customer_id_wins_over_an_identifier_of_another_customer():
    request = enrich(_request(customer_id="c-2", email="ada@example.com"), DirectoryIndex([ADA, BOB]))
    assert request.enrichment is not None
    assert request.enrichment.customer_ids == ("c-2",) and request.enrichment.emails == ("bob@example.com",)


def test_nothing_found_or_nothing_new_leaves_the_request_as_it_was():
    plain = _request(email="carol@example.com")
    assert enrich(plain, DirectoryIndex([ADA, BOB])) is plain
    known = _request(customer_id="c-2", email="bob@example.com")
    assert enrich(known, DirectoryIndex([BOB])) is known


def test_the_sources_name_hashes_never_values():
    request = enrich(_request(customer_id="c-1", email="ada@example.com"), DirectoryIndex([ADA]))
    sources = identifier_sources(request)
    assert {"kind": "email", "sha256": sha256_hex("ada@example.com"), "source": "request"} in sources
    assert {
        "kind": "email",
        "sha256": sha256_hex("ada.work@example.org"),
        "source": "directory",
        "customer_ids": "c-1",
    } in sources
    assert ADDRESS is not None
    assert any(s.get("sha256") == postal_hash(ADDRESS) and s["source"] == "directory" for s in sources)
    assert "ada.work" not in repr(sources) and "Main" not in repr(sources)


def test_enriched_identifiers_join_the_suppression_list():
    request = enrich(_request(customer_id="c-1"), DirectoryIndex([ADA]))
    kinds = sorted((e.kind.value, e.value) for e in entries_of(request))
    assert ("email", "ada.work@example.org") in kinds and ("phone", "+14155550123") in kinds
    assert [k for k, _ in kinds].count("postal") == 1


# --- planning ----------------------------------------------------------------------------------
def test_all_reaches_the_mail_house_with_the_address_on_file_and_every_email():
    plain = _request(customer_id="c-1")
    # Without the directory the mail house and the email provider are skipped.
    assert [c.destination for c in plan_commands(plain, NOW, DEFAULT)] == ["third_party_sharing"]
    request = enrich(plain, DirectoryIndex([ADA]))
    planned = plan_commands(request, NOW, DEFAULT)
    by_dest: dict[str, list] = {}
    for c in planned:
        by_dest.setdefault(c.destination, []).append(c)
    [house] = by_dest["mail_house"]
    assert house.record["postal_address"] == ADDRESS
    assert house.command_id == command_id("e-1", "mail_house")
    emails = by_dest["email_provider"]
    assert {c.record["email"] for c in emails} == {"ada@example.com", "ada.work@example.org"}
    assert emails[0].command_id == command_id("e-1", "email_provider")
    assert len({c.command_id for c in planned}) == len(planned)  # distinct ids
    # The partners get each email's hash (the phone's hash goes with the first command).
    partners = by_dest["third_party_sharing"]
    assert [c.record["email"] for c in partners] == [None, None]
    assert [c.record["email_sha256"] for c in partners] == [sha256_hex(c.record["email"]) for c in emails]
    assert [c.record["phone_sha256"] for c in partners] == [sha256_hex("+14155550123"), None]
    # Planning again gives the same ids (redelivery, re-sends).
    assert [c.command_id for c in plan_commands(request, NOW, DEFAULT)] == [c.command_id for c in planned]


def test_an_explicit_scope_is_served_from_the_directory():
    request = enrich(_request(customer_id="c-1", scopes=["POSTAL_MARKETING"]), DirectoryIndex([ADA]))
    [house] = plan_commands(request, NOW, DEFAULT)
    assert house.destination == "mail_house" and house.record["postal_address"] == ADDRESS


def test_a_request_without_enrichment_plans_exactly_as_before():
    request = _request(email="x@example.com", customer_id="c-7")
    planned = plan_commands(request, NOW, DEFAULT)
    assert [c.command_id for c in planned] == [
        command_id("e-1", "email_provider"),
        command_id("e-1", "third_party_sharing"),
    ]


def test_the_sweeper_rebuilds_each_command_from_the_stored_enrichment():
    request = enrich(_request(customer_id="c-1"), DirectoryIndex([ADA]))
    assert request.enrichment is not None
    import json

    stored = json.loads(request.enrichment.to_json())
    row = (
        request.event_id,
        request.customer_id,
        request.email,
        request.phone,
        request.postal_address,
        request.email_sha256,
        request.phone_sha256,
        [s.value for s in request.scopes],
        request.source.value,
        request.jurisdiction,
        request.requested_at,
        request.due_at,
        request.deadline_rule,
        request.subject_key,
        request.content_sha256,
        request.action.value,
        request.device_id,
        stored,
    )
    rebuilt = request_from_row(row)
    assert rebuilt.enrichment == request.enrichment
    dest = DEFAULT.get("email_provider")
    assert dest is not None
    again = commands_for(rebuilt, dest, NOW)
    assert [(c.command_id, c.record["email"]) for c in again] == [
        (c.command_id, c.record["email"]) for c in commands_for(request, dest, NOW)
    ]
    assert Enrichment.from_stored(None) is None


def test_a_confirmation_names_each_destination_once():
    t = NOW
    rows = [
        DestinationRow("a", "e-1", "email_provider", AckStatus.ALREADY_SUPPRESSED.value, None, t),
        DestinationRow("b", "e-1", "email_provider", AckStatus.APPLIED.value, None, t + timedelta(seconds=5)),
        DestinationRow("c", "e-1", "mail_house", AckStatus.APPLIED.value, None, t),
    ]
    request = RequestRow("e-1", "PENDING", "c-1", None, None, ("ALL",), t)
    record = confirmation_record(request, rows, t + timedelta(minutes=1))
    assert [(d["destination"], d["status"]) for d in record["destinations"]] == [
        ("email_provider", "APPLIED"),
        ("mail_house", "APPLIED"),
    ]
    pending = [*rows[:2], DestinationRow("d", "e-1", "email_provider", "PENDING", None, None)]
    with pytest.raises(ValueError, match="has not applied it"):
        confirmation_record(request, pending, t)


def test_an_opt_in_is_never_enriched():
    opt_in = _request(customer_id="c-1", action="OPT_IN")
    assert enrich(opt_in, DirectoryIndex([ADA])) is opt_in
