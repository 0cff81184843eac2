"""``optout reconcile``: read a destination's list back, compare it with ``suppression_state``,
re-issue what is missing, report what the destination has that we never sent.

1. Read back (``read_back_of``): the kinds whose destination can list its entries
   (``SUPPORTED_KINDS``); every other kind is refused with one clear line. A mail house's
   list is its newest published export (``services.connectors.mail_house_export``), a
   snapshot: entries suppressed here at or after the time it was written are not expected
   in it (counted as ``newer_than_export``).
2. Expected: every ``email_sha256:`` (email kinds), ``phone_sha256:`` (SMS) or ``postal:``
   (mail houses) subject of ``suppression_state`` suppressed for at least one scope the
   destination serves.
3. Compare by SHA-256 of the normalized identifier or address key
   (``services.reconcile.drift``); an address missing by its key but present in the export in
   its file form is present (``drift.match_file_forms``).
4. Repair (unless ``repair=False``): each missing entry whose raw value the encrypted
   suppression list holds is re-issued as a SuppressionCommand on the destination's topic,
   request id ``reconcile:<destination>:<sha256>:<generation>`` (deterministic: see
   ``drift``). The connector applies it like any command and acknowledges it; the confirmer
   ignores acks of ``reconcile:`` requests (no ``destination_status`` row, no confirmation,
   no customer notice). Its outcome is in ``connector_applied`` (the connector's dedupe
   store) under that request id. A postal one carries the customer id of the request that
   suppressed the address.
5. The report (counts only) is stored in ``reconcile_reports`` (migration 0013); the
   exporter exports it as gauges. In the same transaction each re-issued command is written
   into the audit trail of the request(s) whose suppression it re-sends
   (``audit.record_reissued``, step ``reconcile_resent``); the confirmer adds its ack there.
   An ack that came before those rows were committed is added by the reconcile itself, from
   the connector's dedupe store (``audit.record_applied_reissue_acks``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from services.common import audit
from services.common.avro import default_codec
from services.common.clock import Clock, SystemClock, to_millis
from services.common.contract import Action, Destination, Identifier, Scope
from services.common.db import connect
from services.common.errors import ConfigurationError
from services.common.kafka import DeliveryTracker, make_producer
from services.common.logging import get_logger
from services.common.records import SuppressionCommandRecord
from services.common.sealing import KeyRing, SealError
from services.common.settings import Settings
from services.connectors import (
    email_provider,
    mail_house,
    mailgun,
    sendgrid,
    ses,
    sftp_mail_house,
    sms_optout_list,
)
from services.connectors.kit import Connector
from services.connectors.mail_house_export import EXPORT_DIR, Export, key_of_address, read_folder_export
from services.connectors.registry import build_connector, destination_of
from services.reconcile.drift import (
    RANK_STEP,
    Drift,
    Expected,
    compare,
    match_file_forms,
    reissue_ids,
    reissue_prefix,
)
from services.suppression.entries import Kind, suppression_ring
from services.suppression.identifiers import identifiers_for

log = get_logger(__name__)

# Kinds whose list can be read back, and what each reads (see docs/destinations.md).
SUPPORTED_KINDS: dict[str, str] = {
    sendgrid.KIND: "GET /v3/suppression/unsubscribes (limit/offset pages)",
    mailgun.KIND: "GET /v3/{domain}/unsubscribes (paging.next)",
    email_provider.KIND: "GET /v3/asm/suppressions/global (one list)",
    ses.KIND: "ListContacts (NextToken pages; opted-out contacts only)",
    sms_optout_list.KIND: "DescribeOptedOutNumbers (NextToken pages)",
    sftp_mail_house.KIND: "the newest export/suppressions-YYYYMMDD.csv the mail house publishes (SFTP)",
    mail_house.KIND: "the newest <folder>/export/suppressions-YYYYMMDD.csv the mail house publishes",
}
_KIND_OF = {
    Identifier.EMAIL: Kind.EMAIL,
    Identifier.PHONE: Kind.PHONE,
    Identifier.POSTAL_ADDRESS: Kind.POSTAL,
}
_PREFIX_OF = {
    Identifier.EMAIL: "email_sha256:",
    Identifier.PHONE: "phone_sha256:",
    Identifier.POSTAL_ADDRESS: "postal:",
}
# How long a re-issued command has (its ``deadline``; connectors do not act on it).
REISSUE_DEADLINE = timedelta(days=1)


@dataclass(frozen=True)
class Listing:
    """What a destination returned: raw emails or phones (mail houses: file-form address keys),
    and, for a snapshot (a mail house's export), its name and when it was written."""

    entries: list[str]
    source: str | None = None
    as_of: datetime | None = None


@dataclass(frozen=True)
class ReadBack:
    identifier: Identifier  # EMAIL, PHONE or POSTAL_ADDRESS: what the destination lists
    read: Callable[[], Listing]
    connector: Connector


def _live(entries: Callable[[], Iterable[str]]) -> Callable[[], Listing]:
    return lambda: Listing(list(entries()))


def _export(read: Callable[[], Export]) -> Callable[[], Listing]:
    def listing() -> Listing:
        export = read()
        return Listing(export.keys, export.name, export.written_at)

    return listing


@dataclass(frozen=True)
class Report:
    destination: str
    kind: str
    ran_at: datetime
    drift: Drift
    reissued: int
    unsendable: int  # missing, but the suppression list holds no (readable) value
    repaired: bool
    source: str | None = None  # the export read (mail houses)
    as_of: datetime | None = None  # when that export was written
    newer_than_export: int = 0  # suppressed here at or after ``as_of``: not expected in it

    @property
    def missing(self) -> int:
        return len(self.drift.missing)

    def as_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "kind": self.kind,
            "ran_at": self.ran_at.isoformat(),
            "expected": self.drift.expected,
            "present": self.drift.present,
            "missing": self.missing,
            "unknown": len(self.drift.unknown),
            "unreadable": self.drift.unreadable,
            "reissued": self.reissued,
            "unsendable": self.unsendable,
            "repair": self.repaired,
            "export": self.source,
            "export_written_at": self.as_of.isoformat() if self.as_of else None,
            "newer_than_export": self.newer_than_export,
            # hashes only (SHA-256 of the normalized identifier), never the values
            "missing_sha256": [m.sha256 for m in self.drift.missing],
            "unknown_sha256": list(self.drift.unknown),
        }


def read_back_of(settings: Settings, destination: Destination) -> ReadBack:
    """The list reader of ``destination``; ``ConfigurationError`` for a kind that has none."""
    if destination.kind not in SUPPORTED_KINDS:
        raise ConfigurationError(
            f"destination {destination.id!r} ({destination.kind}): reconciliation is not supported "
            f"for this kind (supported: {', '.join(sorted(SUPPORTED_KINDS))})"
        )
    connector = build_connector(settings, destination.id)
    if isinstance(connector, sendgrid.SendGridConnector):
        return ReadBack(Identifier.EMAIL, _live(connector.list_suppressed), connector)
    if isinstance(connector, mailgun.MailgunConnector):
        return ReadBack(Identifier.EMAIL, _live(connector.list_unsubscribed), connector)
    if isinstance(connector, email_provider.EmailProviderConnector):
        return ReadBack(Identifier.EMAIL, _live(connector.list_suppressed), connector)
    if isinstance(connector, ses.SesConnector):
        return ReadBack(Identifier.EMAIL, _live(connector.opted_out_addresses), connector)
    if isinstance(connector, sms_optout_list.SmsOptOutListConnector):
        return ReadBack(Identifier.PHONE, _live(connector.opted_out_numbers), connector)
    if isinstance(connector, sftp_mail_house.SftpMailHouseConnector):
        return ReadBack(Identifier.POSTAL_ADDRESS, _export(connector.read_export), connector)
    if isinstance(connector, mail_house.MailHouseConnector):
        folder, name = connector.folder / EXPORT_DIR, destination.id
        return ReadBack(
            Identifier.POSTAL_ADDRESS, _export(lambda: read_folder_export(folder, name)), connector
        )
    connector.close()
    raise ConfigurationError(f"destination {destination.id!r}: its connector cannot list its entries")


_EXPECTED = """
SELECT substr(subject, %s), array_agg(scope ORDER BY scope), max(since),
       (array_agg(event_id ORDER BY since DESC))[1]
FROM suppression_state
WHERE subject LIKE %s AND suppressed AND scope = ANY(%s)
GROUP BY subject
"""


def expected_of(
    conn: psycopg.Connection[Any], identifier: Identifier, scopes: Sequence[str]
) -> dict[str, Expected]:
    prefix = _PREFIX_OF[identifier]
    rows = conn.execute(_EXPECTED, (len(prefix) + 1, prefix + "%", list(scopes))).fetchall()
    return {r[0]: Expected(r[0], tuple(r[1]), r[2], r[3]) for r in rows}


def _customers(conn: psycopg.Connection[Any], missing: Sequence[Expected]) -> dict[str, str]:
    """Per hash, the customer id of the request that suppressed it (a mail house suppresses an
    address sent with a customer id only where it is that customer's address on file)."""
    wanted = {m.event_id: m.sha256 for m in missing if m.event_id}
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT event_id, customer_id FROM requests WHERE event_id = ANY(%s) AND customer_id IS NOT NULL",
        (list(wanted),),
    ).fetchall()
    return {wanted[r[0]]: r[1] for r in rows}


def _generations(conn: psycopg.Connection[Any], destination: str, hashes: Sequence[str]) -> dict[str, int]:
    """Per hash, how many re-issues the destination already has an outcome for."""
    if not hashes:
        return {}
    prefix = reissue_prefix(destination, "")
    rows = conn.execute(
        "SELECT split_part(substr(request_id, %s), ':', 1), count(*) FROM connector_applied "
        "WHERE destination = %s AND request_id LIKE %s GROUP BY 1",
        (len(prefix) + 1, destination, prefix.replace("_", r"\_") + "%"),
    ).fetchall()
    counts = {r[0]: int(r[1]) for r in rows}
    return {h: counts.get(h, 0) for h in hashes}


def _values(
    conn: psycopg.Connection[Any], ring: KeyRing, kind: Kind, hashes: Sequence[str]
) -> dict[str, str]:
    """Raw values of ``hashes`` from the encrypted suppression list (only in memory); an entry
    that does not open with the configured keys is left out (counted as unsendable)."""
    if not hashes:
        return {}
    try:
        found = identifiers_for(conn, ring, kind, hashes)
    except SealError:  # one bad entry: open them one by one, keep the others
        found = {}
        for sha in hashes:
            try:
                found.update(identifiers_for(conn, ring, kind, [sha]))
            except SealError:
                log.warning(
                    "a suppression-list entry does not open with the configured keys", kind=kind.value
                )
    return {sha: entry.identifier for sha, entry in found.items()}


def command_records(
    destination: Destination,
    identifier: Identifier,
    missing: Sequence[Expected],
    values: Mapping[str, str],
    generations: Mapping[str, int],
    now: datetime,
    customers: Mapping[str, str] | None = None,
) -> list[SuppressionCommandRecord]:
    """The re-issued commands (only the identifier fields the destination takes; a postal
    one with the customer id of the request that suppressed the address, ``customers``)."""
    records: list[SuppressionCommandRecord] = []
    for entry in missing:
        value = values.get(entry.sha256)
        if value is None:
            continue
        request_id, cid = reissue_ids(destination.id, entry.sha256, generations.get(entry.sha256, 0))
        email = value if identifier is Identifier.EMAIL else None
        phone = value if identifier is Identifier.PHONE else None
        address = json.loads(value) if identifier is Identifier.POSTAL_ADDRESS else None
        records.append(
            SuppressionCommandRecord(
                command_id=cid,
                request_id=request_id,
                destination=destination.id,
                customer_id=(customers or {}).get(entry.sha256)
                if Identifier.CUSTOMER_ID in destination.identifiers
                else None,
                email=email if Identifier.EMAIL in destination.identifiers else None,
                phone=phone if Identifier.PHONE in destination.identifiers else None,
                postal_address=address if Identifier.POSTAL_ADDRESS in destination.identifiers else None,
                email_sha256=entry.sha256 if email is not None else None,
                phone_sha256=entry.sha256 if phone is not None else None,
                scopes=list(entry.scopes),
                issued_at=to_millis(now),
                deadline=to_millis(now + REISSUE_DEADLINE),
                action=Action.OPT_OUT.value,
                requested_at=to_millis(entry.since + RANK_STEP),
                device_id=None,
            )
        )
    return records


_STORE = """
INSERT INTO reconcile_reports
    (destination, kind, ran_at, expected, present, missing, unknown, reissued, unsendable,
     source_written_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (destination) DO UPDATE SET kind = EXCLUDED.kind, ran_at = EXCLUDED.ran_at,
    expected = EXCLUDED.expected, present = EXCLUDED.present, missing = EXCLUDED.missing,
    unknown = EXCLUDED.unknown, reissued = EXCLUDED.reissued, unsendable = EXCLUDED.unsendable,
    source_written_at = EXCLUDED.source_written_at
"""


def reconcile(settings: Settings, name: str, repair: bool = True, clock: Clock | None = None) -> Report:
    """Compare destination ``name`` with our state; re-issue what is missing when ``repair``."""
    destination = destination_of(settings, name)
    read_back = read_back_of(settings, destination)
    now = (clock or SystemClock()).now()
    scopes = sorted(s.value for s in destination.scopes if s is not Scope.ALL)
    try:
        listing = read_back.read()
    finally:
        read_back.connector.close()
    identifier = read_back.identifier
    postal = identifier is Identifier.POSTAL_ADDRESS
    with connect(settings.dsn(), prepared_statements=settings.database_prepared_statements) as conn:
        expected = expected_of(conn, identifier, scopes)
        newer = 0
        if listing.as_of is not None:  # a snapshot: what we suppressed since is not in it yet
            too_new = [h for h, e in expected.items() if e.since >= listing.as_of]
            for digest in too_new:
                del expected[digest]
            newer = len(too_new)
        drift = compare(expected, listing.entries, identifier)
        values: dict[str, str] = {}
        if drift.missing and (repair or postal):
            values = _values(
                conn, suppression_ring(settings), _KIND_OF[identifier], [m.sha256 for m in drift.missing]
            )
        if postal and drift.missing:
            forms = {sha: key_of_address(json.loads(v)) for sha, v in values.items()}
            drift = match_file_forms(drift, forms, listing.entries)
        records: list[SuppressionCommandRecord] = []
        if repair and drift.missing:
            hashes = [m.sha256 for m in drift.missing]
            generations = _generations(conn, destination.id, hashes)
            customers = _customers(conn, drift.missing) if postal else {}
            records = command_records(
                destination, identifier, drift.missing, values, generations, now, customers
            )
        if records:
            _publish(settings, destination.id, records)
        report = Report(
            destination.id,
            destination.kind,
            now,
            drift,
            reissued=len(records),
            unsendable=len(drift.missing) - len(records) if repair else 0,
            repaired=repair,
            source=listing.source,
            as_of=listing.as_of,
            newer_than_export=newer,
        )
        with conn.transaction():
            conn.execute(
                _STORE,
                (
                    name,
                    destination.kind,
                    now,
                    drift.expected,
                    drift.present,
                    report.missing,
                    len(drift.unknown),
                    report.reissued,
                    report.unsendable,
                    listing.as_of,
                ),
            )
            # The audit trail of the requests whose suppression was re-sent (no values).
            sent = [m for m in drift.missing if m.sha256 in values] if records else []
            audit.record_reissued(
                conn,
                audit.Reissue.RECONCILE,
                destination.id,
                scopes,
                [
                    (r["command_id"], _PREFIX_OF[identifier] + m.sha256)
                    for r, m in zip(records, sent, strict=True)
                ],
                now,
                f"reconcile re-sent to {destination.id}",
            )
        # The commands were delivered before their reconcile_resent rows were committed: a
        # connector may have acknowledged some already, and the confirmer found no row to add
        # the ack to. Those acks (the connector's dedupe store) are written now, under the
        # lock the confirmer shares (audit.py, "Acks that beat their command's audit row").
        conn.commit()
        audit.record_applied_reissue_acks(conn, destination.id, [r["command_id"] for r in records], now)
    log.debug(  # the CLI prints the report itself (stdout stays one JSON document with --json)
        "reconciled",
        destination=name,
        expected=drift.expected,
        present=drift.present,
        missing=report.missing,
        unknown=len(drift.unknown),
        reissued=report.reissued,
        unsendable=report.unsendable,
    )
    return report


def _publish(settings: Settings, destination: str, records: Sequence[SuppressionCommandRecord]) -> None:
    codec = default_codec()
    producer = make_producer(settings)
    tracker = DeliveryTracker(producer)
    for record in records:
        tracker.produce(
            settings.suppress_topic(destination),
            value=codec.encode("SuppressionCommand", record),
            key=record["request_id"],
        )
    tracker.wait()
