"""``optout run web``: the web app under uvicorn, stopped by our stop event (SIGTERM/SIGINT).

One worker runs uvicorn in a thread of this process. With ``OPTOUT_WEB_WORKERS`` > 1 this
process binds the socket once and starts that many worker processes sharing it; each
handles SIGTERM the same way and this process stops them all when it is asked to stop or
when one of them dies.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
from multiprocessing.process import BaseProcess

import uvicorn

from services.common.errors import ConfigurationError
from services.common.logging import configure_logging, get_logger
from services.common.settings import Settings
from services.common.shutdown import install_stop_handlers
from services.web.app import create_app
from services.web.links import check_public_url
from services.web.tokens import keyring_from_settings

log = get_logger(__name__)


def _config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.web_host,
        port=settings.web_port,
        # No access log: paths carry tokens. The app counts and logs what matters.
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=True,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
        backlog=4096,
        limit_concurrency=10_000,
    )


def serve(settings: Settings, stop: threading.Event, sockets: list[socket.socket] | None = None) -> None:
    """Run one uvicorn server until ``stop`` is set (it drains in-flight requests)."""
    server = uvicorn.Server(_config(settings))
    # In a non-main thread uvicorn installs no signal handlers: our stop event rules.
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name="uvicorn")
    thread.start()
    while thread.is_alive() and not stop.wait(0.2):
        pass
    server.should_exit = True
    thread.join(30)
    if not stop.is_set():
        raise RuntimeError("the web server stopped by itself (is the port in use?)")


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
    sock = socket.socket(socket.AF_INET6 if ":" in settings.web_host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.web_host, settings.web_port))
    sock.listen(4096)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    try:
        for index in range(settings.web_workers):
            child = context.Process(target=_worker, args=(settings, sock), name=f"web-{index}")
            child.start()
            workers.append(child)
        while not stop.wait(0.5):
            if any(not p.is_alive() for p in workers):
                log.error("a web worker exited; stopping the others")
                break
    finally:
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: the worker drains and exits
        for proc in workers:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        sock.close()
    if not stop.is_set():
        raise RuntimeError("a web worker exited unexpectedly")
