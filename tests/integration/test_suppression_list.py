"""The encrypted suppression list against the real PostgreSQL (and, once, the real broker):
intake writes sealed entries in the request's transaction, the table holds no plaintext,
rotation re-encrypts everything while intake writes, erasure removes a person."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.common.destinations import load_destinations
from services.common.sealing import KeyRing, SealError, b64encode, kid_of
from services.common.settings import DEV_SUPPRESSION_KEY
from services.domain.identity import sha256_hex
from services.domain.planning import plan_commands
from services.domain.validation import OptOutRequest, postal_key, validate_request
from services.intake.service import run as run_intake
from services.intake.store import record_batch
from services.publisher.publish import RequestPublisher
from services.suppression.entries import Kind, open_value
from services.suppression.erase import Person, erase_person
from services.suppression.identifiers import identifiers_for, iterate
from services.suppression.rotate import rotate
from tests.support.pipeline import ADDRESS, isolated_settings, running, wait_until

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
DEV_RING = KeyRing({"dev": DEV_SUPPRESSION_KEY}, "dev")
# Opens every entry any test of the session writes (intake writes with the dev key).
ALL_KEYS = {"dev": DEV_SUPPRESSION_KEY, "k1": KEY_1, "k2": KEY_2}


def _request(event_id: str | None = None, scopes: tuple[str, ...] = ("ALL",), **fields: Any) -> OptOutRequest:
    record: dict[str, Any] = {
        "event_id": event_id or f"supp-{uuid.uuid4()}",
        "scopes": list(scopes),
        "source": "API",
        "requested_at": NOW - timedelta(minutes=1),
        **fields,
    }
    return validate_request(record, NOW, timedelta(minutes=5))


def _record(conn: psycopg.Connection[Any], requests: list[OptOutRequest], ring: KeyRing = DEV_RING):
    commands = {r.event_id: plan_commands(r, NOW, load_destinations()) for r in requests}
    return record_batch(conn, requests, commands, NOW, ring)


def _rows(conn: psycopg.Connection[Any], kind: Kind, hashes: list[str]) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT sha256, sealed, scopes, first_request_id, last_request_id, created_at, updated_at"
        " FROM suppression_list WHERE kind = %s AND sha256 = ANY(%s)",
        (kind.value, hashes),
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def _unique_phone() -> str:
    """A US number no other test of the session uses (E.164)."""
    return f"+1{uuid.uuid4().int % 8_000_000_000 + 2_000_000_000}"


def _unique_email() -> str:
    return f"Supp.{uuid.uuid4().hex[:10]}@Example.com"


def test_recording_a_request_seals_its_identifiers_in_the_same_transaction(database):
    email = _unique_email()
    request = _request(email=email, phone="+1 (415) 555-0199", postal_address=ADDRESS)
    with psycopg.connect(database["app"]) as conn:
        outcome = _record(conn, [request])
        assert outcome.new == {request.event_id}
        postal_hash = sha256_hex(postal_key(request.postal_address) or "")
        expected = {
            Kind.EMAIL: (request.email_sha256, email.lower()),
            Kind.PHONE: (request.phone_sha256, "+14155550199"),
            Kind.POSTAL: (postal_hash, None),
        }
        for kind, (digest, clear) in expected.items():
            assert digest
            (sealed, scopes, first, last, created, updated) = _rows(conn, kind, [digest])[digest]
            assert kid_of(sealed) == "dev"
            assert (scopes, first, last, created, updated) == (
                ["ALL"],
                request.event_id,
                request.event_id,
                NOW,
                NOW,
            )
            opened = open_value(DEV_RING, kind, digest, sealed)
            if clear is not None:
                assert opened == clear
            else:
                assert json.loads(opened) == request.postal_address
        stored = conn.execute(
            "SELECT postal_sha256 FROM requests WHERE event_id = %s", (request.event_id,)
        ).fetchone()
        assert stored == (postal_hash,)


def test_redelivery_changes_nothing_and_a_later_request_merges_into_the_entry(database):
    email = _unique_email()
    first = _request(email=email, scopes=("EMAIL_MARKETING",))
    digest = first.email_sha256
    assert digest
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [first])
        before = _rows(conn, Kind.EMAIL, [digest])[digest]
        again = _record(conn, [first])  # redelivered: a duplicate, nothing recorded
        assert again.duplicates == {first.event_id}
        assert _rows(conn, Kind.EMAIL, [digest])[digest] == before
        # Two new requests of the same person in one chunk, and later a third one.
        second = _request(email=email.upper(), scopes=("THIRD_PARTY_SHARING",))
        third = _request(email=email, scopes=("EMAIL_MARKETING",))
        assert _record(conn, [second, third]).new == {second.event_id, third.event_id}
        sealed, scopes, first_id, last_id, _, _ = _rows(conn, Kind.EMAIL, [digest])[digest]
        assert scopes == ["EMAIL_MARKETING", "THIRD_PARTY_SHARING"]
        assert (first_id, last_id) == (first.event_id, third.event_id)
        assert open_value(DEV_RING, Kind.EMAIL, digest, sealed) == email.lower()
        count = conn.execute(
            "SELECT count(*) FROM suppression_list WHERE kind = 'email' AND sha256 = %s", (digest,)
        ).fetchone()
        assert count == (1,)


def test_a_whole_table_dump_holds_no_plaintext(database):
    email = _unique_email()
    phone = _unique_phone()
    address = {**ADDRESS, "name": f"Dump Tester {uuid.uuid4().hex[:6]}"}
    request = _request(email=email, phone=phone, postal_address=address)
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [request])
        dump = "\n".join(
            row[0] for row in conn.execute("SELECT s::text FROM suppression_list AS s").fetchall()
        ).lower()
    assert request.email_sha256 and request.email_sha256 in dump  # the dump does hold the row
    secrets = [email, phone, phone[1:], address["name"], *address["lines"], address["postal_code"]]
    for secret in secrets:
        assert secret.lower() not in dump, secret
    assert "@" not in dump


def test_a_value_moved_to_another_row_does_not_open(database):
    one, two = _request(email=_unique_email()), _request(email=_unique_email())
    assert one.email_sha256 and two.email_sha256
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [one, two])
        # Someone with write access to the table swaps the two values.
        conn.execute(
            "UPDATE suppression_list SET sealed = (SELECT sealed FROM suppression_list WHERE kind = 'email'"
            " AND sha256 = %s) WHERE kind = 'email' AND sha256 = %s",
            (one.email_sha256, two.email_sha256),
        )
        with pytest.raises(SealError) as err:
            identifiers_for(conn, DEV_RING, Kind.EMAIL, [two.email_sha256])
        assert err.value.reason == "forged"
        assert identifiers_for(conn, DEV_RING, Kind.EMAIL, [one.email_sha256])[one.email_sha256].identifier
        # Leave no forged row behind for the tests that read the whole list.
        conn.execute("DELETE FROM suppression_list WHERE kind = 'email' AND sha256 = %s", (two.email_sha256,))


def test_identifiers_for_and_iterate_decrypt_by_hash_kind_and_scope(database):
    ring = KeyRing(ALL_KEYS, "k1")
    tag = uuid.uuid4().hex[:8]
    emails = [f"iter{i}-{tag}@example.com" for i in range(7)]
    requests = [
        _request(email=e, scopes=("EMAIL_MARKETING",) if i % 2 else ("THIRD_PARTY_SHARING",))
        for i, e in enumerate(emails)
    ]
    with psycopg.connect(database["app"]) as conn:
        _record(conn, requests, ring)
        hashes = [r.email_sha256 or "" for r in requests]
        found = identifiers_for(conn, ring, Kind.EMAIL, [*hashes[:3], sha256_hex("nobody@example.com")])
        assert {h: s.identifier for h, s in found.items()} == dict(zip(hashes[:3], emails[:3], strict=True))
        chunks = list(iterate(conn, ring, kinds=[Kind.EMAIL], scopes=["EMAIL_MARKETING", "ALL"], chunk=2))
        everything = [s for c in iterate(conn, ring, chunk=3) for s in c]
        total = conn.execute("SELECT count(*) FROM suppression_list").fetchone()
    assert total and len(everything) == total[0] >= len(emails)
    with psycopg.connect(database["app"]) as fresh:
        pages = iterate(fresh, ring, chunk=2)
        assert len(next(pages)) == 2
        # Between pages no transaction stays open (a whole-list replay may take long).
        assert fresh.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        pages.close()
    assert all(len(c) <= 2 for c in chunks)
    seen = [s for c in chunks for s in c]
    assert [s.sha256 for s in seen] == sorted(s.sha256 for s in seen)  # key order, no repeats
    mine = {s.identifier for s in seen if s.identifier.endswith(f"-{tag}@example.com")}
    assert mine == {e for i, e in enumerate(emails) if i % 2}
    assert all(s.kind is Kind.EMAIL and ({"EMAIL_MARKETING", "ALL"} & set(s.scopes)) for s in seen)


def test_rotation_re_encrypts_every_entry_while_intake_writes(database):
    old = KeyRing(ALL_KEYS, "k1")
    new = KeyRing(ALL_KEYS, "k2")
    people = [_unique_email() for _ in range(60)]
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [_request(email=e) for e in people], old)
    stop = threading.Event()
    written: list[int] = []
    failures: list[BaseException] = []

    def keep_writing() -> None:
        # Intake, already on the new key, records more requests of the same people.
        try:
            with psycopg.connect(database["app"]) as conn:
                while not stop.is_set():
                    batch = [_request(email=e) for e in people[len(written) % 50 :][:10]]
                    _record(conn, batch, new)
                    written.append(len(batch))
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        wait_until(lambda: len(written) >= 2, message="the writer is writing")
        with psycopg.connect(database["app"]) as conn:
            progress: list[int] = []
            result = rotate(conn, new, chunk=7, progress=lambda r: progress.append(r.rotated))
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not writer.is_alive(), "the writer did not stop"
    assert not failures, failures
    assert result.unreadable == 0 and result.remaining == {}
    assert progress and progress == sorted(progress)
    with psycopg.connect(database["app"]) as conn:
        rows = conn.execute("SELECT kind, sha256, sealed FROM suppression_list").fetchall()
        assert rows and {kid_of(r[2]) for r in rows} == {"k2"}
        for kind, digest, sealed in rows:
            open_value(new, kind, digest, sealed)  # raises if any value is broken
        again = rotate(conn, new)
    assert again.rotated == 0 and again.remaining == {}
    # The old key can now be retired: the list opens without it.
    retired = KeyRing({"k2": KEY_2}, "k2")
    with psycopg.connect(database["app"]) as conn:
        hashes = [sha256_hex(e.lower()) for e in people]
        assert {s.identifier for s in identifiers_for(conn, retired, Kind.EMAIL, hashes).values()} == {
            e.lower() for e in people
        }


@pytest.mark.expected_errors("suppression entry unreadable")
def test_rotation_reports_entries_it_cannot_decrypt(database):
    lost = KeyRing({"lost": KEY_1}, "lost")
    request = _request(email=_unique_email())
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [request], lost)
        result = rotate(conn, KeyRing(ALL_KEYS, "k2"))
        assert result.unreadable >= 1 and result.remaining and result.remaining.get("lost", 0) >= 1
        conn.execute("DELETE FROM suppression_list WHERE split_part(sealed, '.', 1) = 'lost'")
        conn.commit()


def _erase_cli(database: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {"OPTOUT_DATABASE_URL": database["app"], "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "erase", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_erase_removes_the_entries_and_the_contact_details_of_every_request(database):
    email = _unique_email()
    phone = _unique_phone()
    customer = f"c-{uuid.uuid4().hex[:8]}"
    with_phone = _request(email=email, phone=phone, postal_address=ADDRESS, customer_id=customer)
    phone_only = _request(phone=phone)  # the same person, found through their phone
    bystander = _request(email=_unique_email(), postal_address=ADDRESS)  # shares nothing... but the address
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [with_phone, phone_only])
        _record(conn, [bystander])
        conn.execute("UPDATE requests SET state = 'CONFIRMED' WHERE event_id = %s", (with_phone.event_id,))
        conn.commit()

    done = _erase_cli(database, "--email", f"  {email.upper()} ")
    assert done.returncode == 0, done.stderr
    # Their email and phone; the address is shared with the bystander and stays listed.
    assert "removed 2 suppression-list entries" in done.stdout
    assert "contact details of 2 request(s) (2 matched)" in done.stdout
    assert "kept 1 postal address" in done.stdout
    assert "not confirmed yet" in done.stdout and phone_only.event_id in done.stdout

    postal_hash = sha256_hex(postal_key(with_phone.postal_address) or "")
    with psycopg.connect(database["app"]) as conn:
        for kind, digest, kept in (
            (Kind.EMAIL, with_phone.email_sha256, False),
            (Kind.PHONE, with_phone.phone_sha256, False),
            (Kind.EMAIL, bystander.email_sha256, True),
            (Kind.POSTAL, postal_hash, True),
        ):
            assert digest
            assert bool(_rows(conn, kind, [digest])) is kept, kind
        details = conn.execute(
            "SELECT event_id, email, phone, postal_address, email_sha256, customer_id, pii_purged_at"
            " FROM requests WHERE event_id = ANY(%s)",
            ([with_phone.event_id, phone_only.event_id, bystander.event_id],),
        ).fetchall()
    by_id = {r[0]: r[1:] for r in details}
    for erased in (with_phone, phone_only):
        assert by_id[erased.event_id][:3] == (None, None, None)
        assert by_id[erased.event_id][5] is not None
    assert by_id[with_phone.event_id][3:5] == (with_phone.email_sha256, customer)
    assert by_id[bystander.event_id][0] == bystander.email and by_id[bystander.event_id][2] is not None
    with psycopg.connect(database["app"]) as conn:
        erased_steps = conn.execute(
            "SELECT event_id FROM audit_events WHERE step = 'erased' AND event_id = ANY(%s)"
            " ORDER BY event_id",
            ([with_phone.event_id, phone_only.event_id, bystander.event_id],),
        ).fetchall()
    assert [r[0] for r in erased_steps] == sorted([with_phone.event_id, phone_only.event_id])

    again = _erase_cli(database, "--customer-id", customer)
    assert again.returncode == 0, again.stderr
    assert "removed 0 suppression-list entries" in again.stdout
    assert "contact details of 0 request(s) (2 matched)" in again.stdout


def test_erase_removes_an_address_only_its_owner_carries(database):
    address = {**ADDRESS, "name": f"Only Owner {uuid.uuid4().hex[:6]}"}
    owner = _request(email=_unique_email(), postal_address=address)
    postal_hash = sha256_hex(postal_key(owner.postal_address) or "")
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [owner])
        conn.commit()
        result = erase_person(conn, Person(email_sha256=frozenset({owner.email_sha256 or ""})), NOW)
        assert (result.entries_removed, result.requests_cleared, result.shared_addresses_kept) == (2, 1, 0)
        assert not _rows(conn, Kind.POSTAL, [postal_hash])


def test_erase_by_phone_reports_open_requests_and_refuses_bad_input(database):
    phone = _unique_phone()
    pending = _request(phone=phone)
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [pending])
        conn.commit()
    done = _erase_cli(database, "--phone", phone)
    assert done.returncode == 0, done.stderr
    assert "removed 1 suppression-list entries" in done.stdout
    assert f"re-sends no longer can: {pending.event_id}" in done.stdout
    with psycopg.connect(database["app"]) as conn:
        assert (
            erase_person(
                conn, Person(phone_sha256=frozenset({pending.phone_sha256 or ""})), NOW
            ).entries_removed
            == 0
        )
    bad = _erase_cli(database, "--email", "not-an-email")
    assert bad.returncode == 2 and "invalid" in bad.stderr and "Traceback" not in bad.stderr


def test_intake_service_writes_sealed_entries(base_settings):
    cfg = isolated_settings(base_settings)
    publisher = RequestPublisher(cfg)
    emails = [_unique_email() for _ in range(20)]
    events = [
        publisher.prepare({"event_id": f"evt-{uuid.uuid4()}", "email": e, "scopes": ["ALL"], "source": "API"})
        for e in emails
    ]
    publisher.publish(events)
    hashes = [sha256_hex(e.lower()) for e in emails]

    def listed() -> int:
        with psycopg.connect(cfg.dsn()) as conn:
            return len(_rows(conn, Kind.EMAIL, hashes))

    with running(run_intake, cfg, "intake"):
        wait_until(lambda: listed() == 20, message="20 suppression-list entries")
    with psycopg.connect(cfg.dsn()) as conn:
        found = identifiers_for(conn, DEV_RING, Kind.EMAIL, hashes)
    assert sorted(s.identifier for s in found.values()) == sorted(e.lower() for e in emails)


def test_rotate_and_status_commands(database):
    with psycopg.connect(database["app"]) as conn:
        _record(conn, [_request(email=_unique_email()) for _ in range(5)], DEV_RING)
        conn.commit()
    keys = json.dumps({"dev": b64encode(DEV_SUPPRESSION_KEY), "k1": b64encode(KEY_1), "k2": b64encode(KEY_2)})
    env = {
        "OPTOUT_DATABASE_URL": database["app"],
        "OPTOUT_SUPPRESSION_KEYS": keys,
        "OPTOUT_SUPPRESSION_CURRENT_KID": "k2",
        "PATH": "/usr/bin:/bin",
    }

    def optout(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "services.cli.main", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    before = optout("suppression-list", "status")
    assert before.returncode == 0, before.stderr
    assert "(in key ring)" in before.stdout and "entries:" in before.stdout
    done = optout("suppression-list", "rotate", "--chunk", "2")
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 entries so far" in done.stderr  # one progress line per chunk
    assert "0 unreadable; 0 left under other keys" in done.stdout
    after = optout("suppression-list", "status")
    assert "(current)" in after.stdout and "(in key ring)" not in after.stdout
    with psycopg.connect(database["app"]) as conn:
        assert {kid_of(r[0]) for r in conn.execute("SELECT sealed FROM suppression_list").fetchall()} == {
            "k2"
        }
    env["OPTOUT_ENV"] = "production"
    env["OPTOUT_SUPPRESSION_KEYS"] = json.dumps({"dev": b64encode(DEV_SUPPRESSION_KEY)})
    env["OPTOUT_SUPPRESSION_CURRENT_KID"] = "dev"
    refused = optout("suppression-list", "rotate")
    # The production check names the setting that still holds the well-known dev key.
    assert refused.returncode == 2 and "OPTOUT_SUPPRESSION_KEYS" in refused.stderr


def test_backfill_lists_requests_recorded_before_the_list_existed(database):
    from services.suppression.backfill import backfill

    email, phone = _unique_email().lower(), _unique_phone()
    address = {**ADDRESS, "name": f"Backfill {uuid.uuid4().hex[:6]}"}
    old = _request(email=email, phone=phone, postal_address=address, scopes=("EMAIL_MARKETING",))
    purged = _request(email=_unique_email())
    with psycopg.connect(database["app"]) as conn:
        # As recorded before migration 0005: a request row, no entry, no postal hash.
        for request, details in (
            (old, (email, phone, json.dumps(old.postal_address))),
            (purged, (None,) * 3),
        ):
            conn.execute(
                "INSERT INTO requests (event_id, content_sha256, subject_key, email, phone, postal_address,"
                " email_sha256, phone_sha256, scopes, source, requested_at, due_at, deadline_rule)"
                " VALUES (%s, 'h', 'k', %s, %s, %s, %s, %s, %s, 'API', %s, %s, 'default')",
                (
                    request.event_id,
                    *details,
                    request.email_sha256,
                    request.phone_sha256,
                    list(request.scopes),
                    NOW,
                    NOW,
                ),
            )
        conn.commit()
        postal_hash = sha256_hex(postal_key(old.postal_address) or "")
        first = backfill(conn, DEV_RING, NOW, chunk=3)
        assert first[1] >= 3
        again = backfill(conn, DEV_RING, NOW, chunk=3)
        assert again == first  # idempotent: the same requests, nothing new
        for kind, digest, clear in (
            (Kind.EMAIL, old.email_sha256, email),
            (Kind.PHONE, old.phone_sha256, phone),
            (Kind.POSTAL, postal_hash, None),
        ):
            assert digest
            entry = _rows(conn, kind, [digest])[digest]
            assert entry[1:3] == (["EMAIL_MARKETING"], old.event_id)
            opened = open_value(DEV_RING, kind, digest, entry[0])
            assert (opened == clear) if clear else (json.loads(opened) == old.postal_address)
        assert not _rows(conn, Kind.EMAIL, [purged.email_sha256 or ""])
        stored = conn.execute(
            "SELECT postal_sha256 FROM requests WHERE event_id = %s", (old.event_id,)
        ).fetchone()
        assert stored == (postal_hash,)
