"""``optout suppression-list`` (status, rotate, generate-key) and ``optout erase``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from services.common.clock import SystemClock
from services.common.errors import ConfigurationError
from services.common.settings import settings

if TYPE_CHECKING:
    import psycopg

    from services.suppression.rotate import Rotation


def _connect() -> psycopg.Connection[Any]:
    from services.common.db import connect, require_schema

    cfg = settings()
    require_schema(cfg.dsn())
    conn = connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements)
    found = conn.execute("SELECT to_regclass('public.suppression_list')").fetchone()
    if not found or found[0] is None:
        conn.close()
        raise ConfigurationError("the database has no suppression list; run 'optout migrate'")
    return conn


def cmd_status(_args: argparse.Namespace) -> int:
    from services.suppression.entries import suppression_ring
    from services.suppression.rotate import entries_by_kid

    ring = suppression_ring(settings())
    with _connect() as conn:
        by_kind = conn.execute("SELECT kind, count(*) FROM suppression_list GROUP BY kind ORDER BY kind")
        kinds = {str(k): int(n) for k, n in by_kind.fetchall()}
        kids = entries_by_kid(conn)
    sys.stdout.write(
        f"entries: {sum(kinds.values())} ({', '.join(f'{k} {n}' for k, n in kinds.items()) or '-'})\n"
    )
    for kid, count in kids.items():
        mark = "current" if kid == ring.current else ("in key ring" if kid in ring.kids else "KEY MISSING")
        sys.stdout.write(f"key {kid}: {count} entries ({mark})\n")
    return 0


def _progress(done: Rotation) -> None:
    sys.stderr.write(f"re-encrypted {done.rotated} entries so far ({done.unreadable} unreadable)\n")


def cmd_rotate(args: argparse.Namespace) -> int:
    from services.suppression.entries import suppression_ring
    from services.suppression.rotate import rotate

    ring = suppression_ring(settings())
    with _connect() as conn:
        result = rotate(conn, ring, chunk=args.chunk, progress=_progress)
    remaining = result.remaining or {}
    sys.stdout.write(
        f"re-encrypted {result.rotated} entries under key {ring.current!r}; "
        f"{result.unreadable} unreadable; {sum(remaining.values())} left under other keys"
        + (f" ({', '.join(f'{k}: {n}' for k, n in remaining.items())})" if remaining else "")
        + "\n"
    )
    return 1 if result.unreadable else 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from services.suppression.backfill import backfill
    from services.suppression.entries import suppression_ring

    ring = suppression_ring(settings())

    def progress(requests: int, entries: int) -> None:
        sys.stderr.write(f"read {requests} requests, {entries} identifiers so far\n")

    with _connect() as conn:
        requests, entries = backfill(conn, ring, SystemClock().now(), chunk=args.chunk, progress=progress)
    sys.stdout.write(
        f"listed the {entries} identifiers of {requests} requests still holding contact details\n"
    )
    return 0


def cmd_generate_key(_args: argparse.Namespace) -> int:
    from services.common.sealing import generate_key

    sys.stdout.write(generate_key() + "\n")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from services.domain.identity import normalize_email, normalize_phone, sha256_hex
    from services.domain.validation import normalize_postal_address
    from services.suppression.entries import postal_sha256
    from services.suppression.erase import Person, erase_person

    cfg = settings()
    person = Person(
        email_sha256=frozenset({sha256_hex(normalize_email(args.email))} if args.email else ()),
        phone_sha256=frozenset(
            {sha256_hex(normalize_phone(args.phone, cfg.default_phone_region))} if args.phone else ()
        ),
        postal_sha256=frozenset(
            {h for h in [postal_sha256(normalize_postal_address(json.loads(args.postal_address)))] if h}
            if args.postal_address
            else ()
        ),
        customer_ids=frozenset({args.customer_id.strip()} if args.customer_id else ()),
    )
    with _connect() as conn:
        result = erase_person(conn, person, SystemClock().now())
    sys.stdout.write(
        f"removed {result.entries_removed} suppression-list entries; "
        f"removed the contact details of {result.requests_cleared} request(s) "
        f"({result.requests_matched} matched)\n"
    )
    if result.shared_addresses_kept:
        sys.stdout.write(
            f"kept {result.shared_addresses_kept} postal address entr(y/ies) that other people's "
            "requests also carry\n"
        )
    if result.open_requests:
        sys.stdout.write(
            f"note: {len(result.open_requests)} matched request(s) are not confirmed yet; their "
            "commands already sent still carry the identifiers, re-sends no longer can: "
            + ", ".join(result.open_requests)
            + "\n"
        )
    return 0


def _postal_json(text: str) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError("not a JSON object") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("not a JSON object")
    return text


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "suppression-list",
        help="the encrypted suppression list: status, key rotation",
        description="The suppression list keeps the normalized email, phone and postal address of "
        "every suppressed person, encrypted with OPTOUT_SUPPRESSION_KEYS.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="entries by kind and by key id (no identifiers shown)")
    status.set_defaults(handler=cmd_status)
    rot = actions.add_parser(
        "rotate",
        help="re-encrypt entries under the current key",
        description="Re-encrypt every entry not sealed under OPTOUT_SUPPRESSION_CURRENT_KID, a chunk "
        "per transaction; safe while the services run. Exits 1 if an entry could not be decrypted.",
    )
    rot.add_argument("--chunk", type=int, default=1000, help="entries per transaction (default 1000)")
    rot.set_defaults(handler=cmd_rotate)
    back = actions.add_parser(
        "backfill",
        help="list the identifiers of requests recorded before the suppression list existed",
        description="Add entries for every request that still holds contact details (requests "
        "recorded before migration 0005). Idempotent; safe while the services run.",
    )
    back.add_argument("--chunk", type=int, default=1000, help="requests per transaction (default 1000)")
    back.set_defaults(handler=cmd_backfill)
    gen = actions.add_parser("generate-key", help="print a new random key for OPTOUT_SUPPRESSION_KEYS")
    gen.set_defaults(handler=cmd_generate_key)

    e = sub.add_parser(
        "erase",
        help="erase a person: their suppression-list entries and their requests' contact details",
        description="A deletion request: delete the person's suppression-list entries (the one "
        "named, every email and phone on their requests, and their postal addresses unless other "
        "people's requests carry them too) and remove the email, phone and postal address of all "
        "their requests now. They are no longer kept suppressed.",
    )
    who = e.add_mutually_exclusive_group(required=True)
    who.add_argument("--email")
    who.add_argument("--phone")
    who.add_argument("--customer-id")
    who.add_argument("--postal-address", type=_postal_json, help="the address as JSON")
    e.set_defaults(handler=cmd_erase)
