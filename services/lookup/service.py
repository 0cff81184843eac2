"""``optout run lookup``: the lookup API under uvicorn, stopped by our stop event.

One worker runs uvicorn in a thread of this process. With ``OPTOUT_LOOKUP_WORKERS`` > 1 this
process binds the socket once and starts that many worker processes sharing it (as the web
service does); each handles SIGTERM the same way and this process stops them all when it is
asked to stop or when one of them dies.
"""

from __future__ import annotations

import socket
import threading

import uvicorn

from services.common.errors import ConfigurationError
from services.common.http_server import run_worker_processes, serve_until_stopped, uvicorn_config
from services.common.logging import configure_logging, get_logger
from services.common.settings import Settings
from services.common.shutdown import install_stop_handlers
from services.lookup.app import create_app
from services.observability.health import HEALTH

log = get_logger(__name__)


def check_keys(settings: Settings) -> None:
    keys = [k.get_secret_value() for k in settings.lookup_api_keys]
    if not keys or any(len(k) < 16 for k in keys):
        raise ConfigurationError(
            "OPTOUT_LOOKUP_API_KEYS needs at least one key, each of 16 characters or more "
            '(a JSON list: ["key1", "key2"])'
        )


def _config(settings: Settings) -> uvicorn.Config:
    # No access log: paths carry tokens (web) and query strings raw emails and phones (lookup).
    return uvicorn_config(create_app(settings), settings.lookup_host, settings.lookup_port, date_header=False)


def serve(settings: Settings, stop: threading.Event, sockets: list[socket.socket] | None = None) -> None:
    """Run one uvicorn server until ``stop`` is set (it drains in-flight requests)."""
    serve_until_stopped(uvicorn.Server(_config(settings)), stop, "lookup", sockets, readiness=HEALTH)


def _worker(settings: Settings, sock: socket.socket) -> None:
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    install_stop_handlers(stop)
    serve(settings, stop, [sock])


def run(settings: Settings, stop: threading.Event) -> None:
    check_keys(settings)
    log.info(
        "lookup API listening",
        host=settings.lookup_host,
        port=settings.lookup_port,
        workers=settings.lookup_workers,
        api_keys=len(settings.lookup_api_keys),
    )
    if settings.lookup_workers == 1:
        serve(settings, stop)
        return
    run_worker_processes(
        "lookup", settings.lookup_host, settings.lookup_port, settings.lookup_workers, _worker, settings, stop
    )
