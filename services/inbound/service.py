"""``optout run inbound``: the inbound webhook app under uvicorn in a thread, stopped by our
stop event (SIGTERM/SIGINT). Several instances may run behind a load balancer: the replay
memory is in PostgreSQL and event ids are deterministic."""

from __future__ import annotations

import threading

import psycopg
import uvicorn

from services.common.db import CONNECT_TIMEOUT_SECONDS, first_line
from services.common.errors import ConfigurationError
from services.common.http_server import serve_until_stopped, uvicorn_config
from services.common.logging import get_logger
from services.common.settings import Settings
from services.inbound.app import create_app
from services.inbound.providers import providers_from_settings
from services.observability.health import HEALTH

log = get_logger(__name__)


def require_replay_table(dsn: str) -> None:
    """One clear line when migration 0011 (the replay memory) has not been applied."""
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            row = conn.execute("SELECT to_regclass('public.inbound_replay_tokens')").fetchone()
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"PostgreSQL is not usable ({first_line(exc)}); check OPTOUT_DATABASE_URL"
        ) from None
    if not row or row[0] is None:
        raise ConfigurationError(
            "the database has no inbound_replay_tokens table; run 'optout migrate' first"
        )


def run(settings: Settings, stop: threading.Event) -> None:
    providers = providers_from_settings(settings)  # refuse bad keys before listening
    require_replay_table(settings.dsn())
    # No access log: the app counts and logs what matters, without addresses.
    config = uvicorn_config(
        create_app(settings, providers=providers), settings.inbound_host, settings.inbound_port
    )
    server = uvicorn.Server(config)
    log.info(
        "inbound webhook service listening",
        host=settings.inbound_host,
        port=settings.inbound_port,
        public_url=settings.inbound_public_url,
        providers={p.name: settings.inbound_public_url.rstrip("/") + p.path for p in providers},
    )
    serve_until_stopped(server, stop, "inbound", readiness=HEALTH)  # ready once it listens
