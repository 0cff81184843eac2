"""``optout run web``: the web app under uvicorn, stopped by our stop event (SIGTERM/SIGINT).

One worker runs uvicorn in a thread of this process. With ``OPTOUT_WEB_WORKERS`` > 1 this
process binds the socket once and starts that many worker processes sharing it; each
handles SIGTERM the same way and this process stops them all when it is asked to stop or
when one of them dies.
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
from services.observability.health import HEALTH
from services.web.app import create_app
from services.web.links import check_public_url
from services.web.tokens import keyring_from_settings

log = get_logger(__name__)


def _config(settings: Settings) -> uvicorn.Config:
    # No access log: paths carry tokens (web) and query strings raw emails and phones (lookup).
    return uvicorn_config(create_app(settings), settings.web_host, settings.web_port, date_header=True)


def serve(settings: Settings, stop: threading.Event, sockets: list[socket.socket] | None = None) -> None:
    """Run one uvicorn server until ``stop`` is set (it drains in-flight requests)."""
    serve_until_stopped(uvicorn.Server(_config(settings)), stop, "web", sockets, readiness=HEALTH)


def _worker(settings: Settings, sock: socket.socket) -> None:
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    install_stop_handlers(stop)
    serve(settings, stop, [sock])


def run(settings: Settings, stop: threading.Event) -> None:
    keyring_from_settings(settings)  # refuse bad or dev-only keys before listening
    check_public_url(settings)
    if settings.env.lower() == "production" and not settings.web_device_cookie_secure:
        raise ConfigurationError(
            "OPTOUT_WEB_DEVICE_COOKIE_SECURE=false is for local http only, not OPTOUT_ENV=production"
        )
    log.info(
        "web service listening",
        host=settings.web_host,
        port=settings.web_port,
        workers=settings.web_workers,
        public_url=settings.web_public_url,
    )
    if settings.web_workers == 1:
        serve(settings, stop)
        return
    run_worker_processes(
        "web", settings.web_host, settings.web_port, settings.web_workers, _worker, settings, stop
    )
