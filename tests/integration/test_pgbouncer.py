"""The services through PgBouncer in transaction pooling (issue #14). A PgBouncer of the test's
own (Debian's pgbouncer 1.18, deploy/install-pgbouncer.sh; a free port, in front of the test
stack's PostgreSQL) carries the services' role; migrations stay direct.

Transaction pooling hands a client a server connection for one transaction only
(https://www.pgbouncer.org/features.html): protocol-level prepared statements are not carried
by PgBouncer before 1.21, so psycopg's automatic preparing (after 5 runs of a query on one
connection) must be off (OPTOUT_DATABASE_PREPARED_STATEMENTS=false). The pipeline (intake,
connector, confirmer with its SKIP LOCKED deadline sweeper) and the purge then run through it
in batches small enough that every statement runs many times per connection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.common.db import connect
from services.confirmer.service import run as run_confirmer
from services.connectors.registry import connector_runner
from services.devstack import StackInfo, pgbouncer_server
from services.devstack.config import Paths
from services.devstack.pgbouncer_server import Bouncer
from services.intake.service import run as run_intake
from services.publisher.publish import RequestPublisher
from services.retention.purge import purge_contact_details
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.web import StandinServer
from tests.support.pipeline import free_port, isolated_settings, read_topic, running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        pgbouncer_server.find_program() is None,
        reason="pgbouncer not installed (run deploy/install-pgbouncer.sh)",
    ),
]

ONE_EMAIL_PROVIDER = """
[[destinations]]
name = "esp"
kind = "email_provider"
scopes = ["EMAIL_MARKETING"]
identifiers = ["email"]
requires_one_of = ["email"]
[destinations.settings]
base_url = "{url}"
"""


@pytest.fixture(scope="module")
def bouncer(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bouncer]:
    params = psycopg.conninfo.conninfo_to_dict(stack.database_url)
    folder = tmp_path_factory.mktemp("pgbouncer")
    one = Bouncer(
        directory=folder / "pgbouncer",
        port=free_port(),
        server_host=str(params["host"]),
        server_port=int(str(params["port"])),
        users=((str(params["user"]), str(params["password"])),),
        log_file=folder / "pgbouncer.log",
        pool_size=4,
    )
    pgbouncer_server.ensure_running(Paths.from_env(), one, install=False)
    try:
        yield one
    finally:
        pgbouncer_server.stop(one)
    assert pgbouncer_server.running_pid(one) is None


def test_prepared_statements_break_in_transaction_pooling_unless_turned_off(
    bouncer: Bouncer, database: dict[str, str]
) -> None:
    url = bouncer.url(database["app"])
    # Two clients preparing at once: the second lands on the server connection where the
    # first one's statement already exists under the same name.
    with (
        psycopg.connect(url, autocommit=True, prepare_threshold=0) as first,
        psycopg.connect(url, autocommit=True, prepare_threshold=0) as second,
    ):
        first.execute("SELECT 1").fetchone()
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            second.execute("SELECT 2").fetchone()
    # What the services do with OPTOUT_DATABASE_PREPARED_STATEMENTS=false.
    with (
        connect(url, autocommit=True, prepared_statements=False) as first,
        connect(url, autocommit=True, prepared_statements=False) as second,
    ):
        for i in range(20):
            assert first.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            assert second.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)


def test_the_pipeline_and_the_purge_run_through_pgbouncer(
    bouncer: Bouncer, base_settings: dict[str, Any], database: dict[str, str], tmp_path: Path
) -> None:
    standin = EmailProviderStandin(token="token-of-esp")
    with StandinServer(standin.handle, name="esp") as server:
        path = tmp_path / "destinations.toml"
        path.write_text(ONE_EMAIL_PROVIDER.format(url=server.url))
        cfg = isolated_settings(
            base_settings,
            database_url=bouncer.url(database["app"]),
            database_prepared_statements=False,
            destinations_file=path,
            email_provider_token="token-of-esp",
            batch_size=5,  # many small batches: each statement runs many times per connection
            sweep_interval_seconds=0.2,  # the sweeper's SKIP LOCKED query, again and again
        )
        publisher = RequestPublisher(cfg)
        events = [
            publisher.prepare(
                {
                    "event_id": str(uuid.uuid4()),
                    "email": f"pooled-{i}-{uuid.uuid4().hex[:6]}@example.com",
                    "scopes": ["EMAIL_MARKETING"],
                }
            )
            for i in range(60)
        ]
        publisher.publish(events)
        with ExitStack() as services:
            services.enter_context(running(run_intake, cfg, "intake"))
            services.enter_context(running(connector_runner("esp", cfg), cfg, "esp"))
            services.enter_context(running(run_confirmer, cfg, "confirmer"))
            confirmations = read_topic(cfg, cfg.confirmations_topic, expect=len(events), timeout=90)

    assert sorted(r.decoded()["request_id"] for r in confirmations) == sorted(
        e.record["event_id"] for e in events
    )
    assert len(standin.suppressed) == len(events)
    # The traffic went through PgBouncer (it registered the test's database on first use).
    assert f"registered new auto-database: db={database['name']}" in bouncer.log_file.read_text()

    # optout purge (FOR UPDATE SKIP LOCKED, one transaction per chunk) through it too.
    with connect(cfg.dsn(), prepared_statements=False) as conn:
        purged = purge_contact_details(conn, datetime.now(UTC) + timedelta(days=1), timedelta(0), chunk=7)
    assert purged == len(events)
    with psycopg.connect(database["app"]) as direct:
        left = direct.execute("SELECT count(*) FROM requests WHERE email IS NOT NULL").fetchone()
    assert left == (0,)
