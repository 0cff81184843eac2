"""``optout migrate`` and ``optout topics``: set-up commands for operators."""

from __future__ import annotations

import argparse
import sys

from services.common.settings import settings


def cmd_migrate(_args: argparse.Namespace) -> int:
    from services.common.db import check_database, migrate

    cfg = settings()
    check_database(cfg.admin_dsn())
    applied = migrate(cfg.admin_dsn(), cfg.database_app_role)
    if applied:
        sys.stdout.write("applied: " + ", ".join(applied) + "\n")
    else:
        sys.stdout.write("database schema is up to date\n")
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from services.common.kafka import (
        apply_min_insync_replicas,
        apply_pii_retention,
        check_broker,
        create_topics,
        under_replicated_topics,
    )

    cfg = settings()
    check_broker(cfg)
    created = create_topics(cfg, cfg.all_topics(), partitions=args.partitions)
    for topic in cfg.all_topics():
        state = "created" if topic in created else "exists"
        sys.stdout.write(f"{state:8} {topic}\n")
    for change in apply_pii_retention(cfg):
        was = f"{change.old_ms / 3_600_000:g} h" if change.old_ms is not None else "unset"
        sys.stdout.write(f"retention {change.topic}: {change.new_ms / 3_600_000:g} h (was {was})\n")
    for topic in apply_min_insync_replicas(cfg):
        sys.stdout.write(f"min.insync.replicas {topic}: {cfg.topic_min_insync_replicas}\n")
    for topic, replicas in under_replicated_topics(cfg).items():
        sys.stdout.write(
            f"warning: {topic} has {replicas} replica(s), fewer than OPTOUT_TOPIC_REPLICATION_FACTOR="
            f"{cfg.topic_replication_factor}; only a partition reassignment adds replicas\n"
        )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "migrate",
        help="apply database migrations (idempotent)",
        description="Apply pending SQL migrations with OPTOUT_ADMIN_DATABASE_URL "
        "and grant the app role DML rights.",
    )
    p.set_defaults(handler=cmd_migrate)

    topics = sub.add_parser("topics", help="manage the pipeline's Kafka topics")
    tsub = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="create every topic of the pipeline that is missing")
    create.add_argument(
        "--partitions", type=int, default=None, help="partitions per topic (default: OPTOUT_TOPIC_PARTITIONS)"
    )
    create.set_defaults(handler=cmd_topics_create)
