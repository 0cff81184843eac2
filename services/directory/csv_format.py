"""The customer directory's CSV format: parse, validate and normalize. Pure (reads a text
stream, no database).

One header row, then one row per (customer, identifier set); a customer may have several
rows (one per email, phone or address, or any mix), in any order. Columns, by header name
(case-insensitive, any order; only ``customer_id`` is required):

``customer_id``, ``email``, ``phone``, ``name``, ``address_line1``, ``address_line2``,
``address_line3``, ``city``, ``region``, ``postal_code``, ``country``

Empty cells are skipped. The address columns make one postal address when any of them is
filled (``address_line1``, ``city``, ``postal_code`` and a two-letter ``country`` required);
``name`` belongs to the address. Values are normalized exactly like a request's
(``services/domain/identity.py``, ``validation.normalize_postal_address``), so hashes match.

A bad row gives one ``RowError`` (line number, reason, detail; never the value itself), and
its customer is left out of the import, so a stored customer is never replaced by part of
its rows.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.common.errors import ConfigurationError, PoisonMessage
from services.common.records import PostalAddressRecord
from services.directory.columns import ADDRESS_COLUMNS, COLUMNS, CUSTOMER_ID
from services.domain.enrichment import DirectoryEntry, postal_hash
from services.domain.identity import check_text, normalize_email, normalize_phone
from services.domain.validation import normalize_postal_address

MAX_CUSTOMER_ID = 200
MAX_PER_KIND = 50  # emails, phones or addresses of one customer


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.detail}"


@dataclass
class _Customer:
    emails: dict[str, None] = field(default_factory=dict)  # ordered sets
    phones: dict[str, None] = field(default_factory=dict)
    postal: dict[str, PostalAddressRecord] = field(default_factory=dict)  # by hash

    def entry(self, customer_id: str) -> DirectoryEntry:
        return DirectoryEntry(
            customer_id, tuple(self.emails), tuple(self.phones), tuple(self.postal.values())
        )


@dataclass
class Parsed:
    """A whole file: the valid customers, every bad row, and counts."""

    entries: list[DirectoryEntry] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    rows: int = 0
    skipped_customers: int = 0  # customers left out because one of their rows was bad


def header_columns(header: list[str]) -> list[str]:
    """The normalized column names; ``ConfigurationError`` for an unknown or missing one."""
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise ConfigurationError(
            f"unknown column(s) {', '.join(repr(n) for n in unknown)} in the header; "
            f"expected some of: {', '.join(COLUMNS)}"
        )
    if CUSTOMER_ID not in names:
        raise ConfigurationError("the header has no customer_id column")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigurationError(f"column(s) {', '.join(duplicated)} appear more than once in the header")
    return names


def parse_row(
    cells: dict[str, str], phone_region: str
) -> tuple[str, str | None, str | None, PostalAddressRecord | None]:
    """``(customer_id, email, phone, address)`` of one row, normalized; ``PoisonMessage``."""
    customer_id = check_text(CUSTOMER_ID, cells.get(CUSTOMER_ID, ""), MAX_CUSTOMER_ID).strip()
    if not customer_id:
        raise PoisonMessage("no_customer_id", "customer_id is empty")
    raw_email = check_text("email", cells.get("email", ""), 320).strip()
    raw_phone = check_text("phone", cells.get("phone", ""), 40).strip()
    email = normalize_email(raw_email) if raw_email else None
    phone = normalize_phone(raw_phone, phone_region) if raw_phone else None
    address = None
    if any(cells.get(c, "").strip() for c in ADDRESS_COLUMNS if c != "name"):
        lines = [cells.get(f"address_line{i}", "") for i in (1, 2, 3)]
        address = normalize_postal_address(
            {
                "name": cells.get("name", ""),
                "lines": lines,
                "city": cells.get("city", ""),
                "region": cells.get("region") or None,
                "postal_code": cells.get("postal_code", ""),
                "country": cells.get("country", ""),
            }
        )
    elif cells.get("name", "").strip():
        raise PoisonMessage("invalid_postal_address", "name without an address")
    return customer_id, email, phone, address


def parse_csv(
    lines: Iterable[str],
    phone_region: str = "US",
    progress: Callable[[int], None] | None = None,
    progress_every: int = 100_000,
) -> Parsed:
    """Read a whole directory file. ``progress(rows)`` every ``progress_every`` rows.
    ``ConfigurationError`` when the header is unusable (nothing can be read then)."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ConfigurationError("the file is empty (expected a header row)") from None
    except csv.Error as exc:
        raise ConfigurationError(f"line 1: not CSV ({exc})") from None
    names = header_columns(header)
    customers: dict[str, _Customer] = {}
    bad: set[str] = set()
    parsed = Parsed()
    line = reader.line_num + 1  # where the next row starts
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a NUL byte: the rest cannot be read reliably, and a
            # customer whose rows go on past it would be replaced by part of them
            raise ConfigurationError(f"line {line}: not CSV ({exc}); nothing imported") from None
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue  # blank line
        parsed.rows += 1
        if progress is not None and parsed.rows % progress_every == 0:
            progress(parsed.rows)
        if len(row) != len(names):
            parsed.errors.append(
                RowError(start, "wrong_column_count", f"{len(row)} cells, the header has {len(names)}")
            )
            bad.add(row[names.index(CUSTOMER_ID)].strip() if len(row) > names.index(CUSTOMER_ID) else "")
            continue
        cells = dict(zip(names, row, strict=True))
        try:
            customer_id, email, phone, address = parse_row(cells, phone_region)
        except PoisonMessage as exc:
            parsed.errors.append(RowError(start, exc.reason, exc.detail))
            bad.add(cells.get(CUSTOMER_ID, "").strip())
            continue
        customer = customers.setdefault(customer_id, _Customer())
        if email:
            customer.emails[email] = None
        if phone:
            customer.phones[phone] = None
        if address is not None:
            customer.postal.setdefault(postal_hash(address), address)
        if max(len(customer.emails), len(customer.phones), len(customer.postal)) > MAX_PER_KIND:
            parsed.errors.append(
                RowError(
                    start, "too_many_identifiers", f"more than {MAX_PER_KIND} of one kind for a customer"
                )
            )
            bad.add(customer_id)
    parsed.skipped_customers = len(bad - {""})
    parsed.entries = [c.entry(cid) for cid, c in customers.items() if cid not in bad]
    return parsed
