"""``optout link``: mint unsubscribe links (RFC 8058 headers + footer URL) for senders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.common.errors import ConfigurationError, PoisonMessage
from services.common.settings import settings


def _scopes(text: str) -> list[str]:
    return [s.strip().upper() for s in text.split(",") if s.strip()]


def _row_scopes(value: Any, default: str) -> list[str]:
    if isinstance(value, list):
        return [str(s) for s in value]
    return _scopes(str(value or default))


def _one(args: argparse.Namespace) -> dict[str, Any]:
    from services.web.links import mint_link

    cfg = settings()
    address = json.loads(args.postal_address) if args.postal_address else None
    link = mint_link(
        cfg,
        customer_id=args.customer_id,
        email=args.email,
        scopes=_scopes(args.scopes),
        postal_address=address,
        jurisdiction=args.jurisdiction,
        ttl_days=args.ttl_days,
    )
    return {"customer_id": args.customer_id, "email": args.email, "url": link.url, **link.headers()}


def _from_file(args: argparse.Namespace) -> int:
    from services.web.links import mint_link
    from services.web.tokens import keyring_from_settings

    cfg = settings()
    ring = keyring_from_settings(cfg)
    stream = sys.stdin if args.file == "-" else Path(args.file).open(encoding="utf-8")  # noqa: SIM115
    errors = 0
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object")
                link = mint_link(
                    cfg,
                    customer_id=row.get("customer_id"),
                    email=row.get("email"),
                    scopes=_row_scopes(row.get("scopes"), args.scopes),
                    postal_address=row.get("postal_address"),
                    jurisdiction=row.get("jurisdiction"),
                    ttl_days=args.ttl_days,
                    ring=ring,
                )
            except (PoisonMessage, ValueError, TypeError) as exc:
                errors += 1
                sys.stderr.write(f"{args.file}:{number}: cannot mint a link: {exc}\n")
                continue
            sys.stdout.write(
                json.dumps(
                    {
                        "customer_id": row.get("customer_id"),
                        "email": row.get("email"),
                        "url": link.url,
                        **link.headers(),
                    }
                )
                + "\n"
            )
    return 2 if errors else 0


def cmd_link(args: argparse.Namespace) -> int:
    from services.web.links import gpc_url, mint_gpc_token
    from services.web.tokens import generate_key

    if args.generate_key:
        sys.stdout.write(f"{generate_key()}\n")
        return 0
    if args.file:
        return _from_file(args)
    if args.gpc:
        if not args.customer_id:
            raise ConfigurationError("--gpc needs --customer-id")
        cfg = settings()
        token = mint_gpc_token(cfg, args.customer_id, jurisdiction=args.jurisdiction, ttl_days=args.ttl_days)
        if args.json:
            sys.stdout.write(json.dumps({"token": token, "url": gpc_url(cfg)}) + "\n")
        else:
            sys.stdout.write(f"GPC token: {token}\nSignal URL: {gpc_url(cfg)}\n")
        return 0
    if not (args.email or args.customer_id):
        raise ConfigurationError("name the recipient: --email and/or --customer-id (or --file)")
    out = _one(args)
    if args.json:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(
            f"List-Unsubscribe: {out['List-Unsubscribe']}\n"
            f"List-Unsubscribe-Post: {out['List-Unsubscribe-Post']}\n"
            f"Footer link: {out['url']}\n"
        )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "link",
        help="mint one-click unsubscribe links (RFC 8058) for email senders",
        description="Print, per recipient, the List-Unsubscribe and List-Unsubscribe-Post header "
        "values and the footer URL. The token in the URL is encrypted and authenticated with the "
        "current key of OPTOUT_WEB_TOKEN_KEYS (OPTOUT_WEB_CURRENT_KID); it holds no readable "
        "email address.",
    )
    p.add_argument("--email", help="recipient's email address")
    p.add_argument("--customer-id", help="recipient's customer id")
    p.add_argument(
        "--scopes",
        default="EMAIL_MARKETING",
        help="comma-separated scopes the one-click POST opts out of "
        "(EMAIL_MARKETING, POSTAL_MARKETING, THIRD_PARTY_SHARING, ALL)",
    )
    p.add_argument(
        "--postal-address",
        help="JSON object (name, lines, city, region, postal_code, "
        "country), so the page can stop postal mail too",
    )
    p.add_argument("--jurisdiction", help="e.g. US-CA, EU")
    p.add_argument(
        "--ttl-days",
        type=int,
        default=None,
        help="link lifetime in days (default OPTOUT_WEB_TOKEN_TTL_DAYS; 0 = never expires)",
    )
    p.add_argument(
        "--file", "-f", help="JSON-lines of recipients ('-' for stdin); one JSON line out per recipient"
    )
    p.add_argument(
        "--gpc",
        action="store_true",
        help="mint a Global Privacy Control customer token instead (needs --customer-id)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of header lines")
    p.add_argument(
        "--generate-key",
        action="store_true",
        help="print a new random key for OPTOUT_WEB_TOKEN_KEYS and exit",
    )
    p.set_defaults(handler=cmd_link)
