"""``optout suppression-state publish``: the whole state to the compacted topic
(services/intake/states_backfill.py)."""

from __future__ import annotations

import argparse
import sys

from services.common.clock import SystemClock
from services.common.settings import settings


def cmd_publish(_args: argparse.Namespace) -> int:
    from services.common.avro import default_codec
    from services.common.kafka import make_producer
    from services.intake.states_backfill import publish_state

    cfg = settings()
    producer = make_producer(cfg)

    def progress(done: int) -> None:
        sys.stderr.write(f"\rsubjects published: {done:,}")
        sys.stderr.flush()

    values, tombstones = publish_state(cfg, producer, default_codec(), SystemClock().now(), progress)
    sys.stderr.write("\n")
    sys.stdout.write(
        f"published {values:,} suppressed subjects and {tombstones:,} tombstones "
        f"(opted back in everywhere) to {cfg.suppressions_topic}\n"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "suppression-state",
        help="the suppression state: publish all of it to the compacted topic",
        description="Publish the whole suppression state (suppression_state) to the compacted "
        "topic optout.suppressions: once when upgrading, so that senders' local copies include "
        "the states recorded before the topic existed. Idempotent.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    pub = actions.add_parser("publish", help="publish every subject's current state (tombstones included)")
    pub.set_defaults(handler=cmd_publish)
