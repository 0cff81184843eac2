"""``optout purge``: remove raw contact details of requests confirmed long ago, and the
mail house's suppression files older than the retention period."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from services.common.clock import SystemClock
from services.common.errors import ConfigurationError
from services.common.settings import settings


def _progress(purged: int) -> None:
    sys.stderr.write(f"purged {purged} requests so far\n")


def cmd_purge(args: argparse.Namespace) -> int:
    from services.common.audit import check_audit_retention, purge_audit
    from services.common.db import connect, require_schema
    from services.connectors.mail_house import FILE_PREFIX, folder_of
    from services.connectors.mail_house import KIND as MAIL_HOUSE_KIND
    from services.retention.files import remove_old_mail_house_files
    from services.retention.purge import purge_contact_details, purge_gpc_signals

    cfg = settings()
    require_schema(cfg.dsn())
    days = args.retention_days if args.retention_days is not None else cfg.retention_days
    now = SystemClock().now()
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        check_audit_retention(conn, cfg.audit_retention_days)  # before anything is removed
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        count = purge_contact_details(
            conn,
            now,
            timedelta(days=days),
            dry_run=args.dry_run,
            progress=_progress,
        )
    verb = "would purge" if args.dry_run else "purged"
    sys.stdout.write(
        f"{verb} the contact details of {count} request(s) confirmed or resolved more than {days} days ago\n"
    )
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        signals = purge_gpc_signals(
            conn, now, timedelta(days=cfg.gpc_log_retention_days), dry_run=args.dry_run
        )
    verb = "would delete" if args.dry_run else "deleted"
    sys.stdout.write(
        f"{verb} {signals} GPC signal log row(s) older than {cfg.gpc_log_retention_days} days "
        "(OPTOUT_GPC_LOG_RETENTION_DAYS)\n"
    )
    with connect(cfg.dsn(), prepared_statements=cfg.database_prepared_statements) as conn:
        audited = purge_audit(conn, cfg.audit_retention_days, dry_run=args.dry_run)
    sys.stdout.write(
        f"{verb} {audited} audit event(s) older than {cfg.audit_retention_days} days "
        "(OPTOUT_AUDIT_RETENTION_DAYS)\n"
    )
    # Every folder a local_mail_house destination of the destinations file writes.
    folders = sorted({folder_of(d, cfg) for d in cfg.destinations if d.kind == MAIL_HOUSE_KIND})
    for folder in folders:
        try:
            files = remove_old_mail_house_files(
                folder, now, timedelta(days=days), FILE_PREFIX, dry_run=args.dry_run
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot remove old mail-house files in {folder} ({exc.strerror or exc}); "
                "check OPTOUT_MAIL_HOUSE_DIR or the destination's settings.folder"
            ) from None
        verb = "would remove" if args.dry_run else "removed"
        sys.stdout.write(f"{verb} {len(files)} mail-house file(s) older than {days} days from {folder}\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "purge",
        help="remove raw contact details past the retention period",
        description="Remove the email, phone and postal address of requests confirmed (or "
        "resolved) more than the retention period ago (OPTOUT_RETENTION_DAYS), keeping the "
        "hashes, scopes and timestamps needed to keep suppressing and to prove compliance; and "
        "remove the mail house's suppression files (the folder of each local_mail_house "
        "destination) older than that; and the log of applied GPC signals older than "
        "OPTOUT_GPC_LOG_RETENTION_DAYS (it holds no raw identifier); and audit trail events "
        "older than OPTOUT_AUDIT_RETENTION_DAYS.",
    )
    p.add_argument("--retention-days", type=int, help="override OPTOUT_RETENTION_DAYS")
    p.add_argument("--dry-run", action="store_true", help="only count what would be purged")
    p.set_defaults(handler=cmd_purge)
