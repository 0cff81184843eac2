"""``optout run lookup``: the lookup API under uvicorn, stopped by our stop event.

One worker runs uvicorn in a thread of this process. With ``OPTOUT_LOOKUP_WORKERS`` > 1 this
process binds the socket once and starts that many worker processes sharing it (as the web
service does); each handles SIGTERM the same way and this process stops them all when it is
asked to stop or when one of them dies.
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
from services.lookup.app import create_app

log = get_logger(__name__)


def check_keys(settings: Settings) -> None:
    keys = [k.get_secret_value() for k in settings.lookup_api_keys]
    if not keys or any(len(k) < 16 for k in keys):
        raise ConfigurationError(
            "OPTOUT_LOOKUP_API_KEYS needs at least one key, each of 16 characters or more "
            '(a JSON list: ["key1", "key2"])'
        )


def _config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.lookup_host,
        port=settings.lookup_port,
        access_log=False,  # query strings carry raw emails and phones
        log_config=None,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
        backlog=4096,
        limit_concurrency=10_000,
    )


def serve(settings: Settings, stop: threading.Event, sockets: list[socket.socket] | None = None) -> None:
    """Run one uvicorn server until ``stop`` is set (it drains in-flight requests)."""
    server = uvicorn.Server(_config(settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name="uvicorn")
    thread.start()
    while thread.is_alive() and not stop.wait(0.2):
        pass
    server.should_exit = True
    thread.join(30)
    if not stop.is_set():
        raise RuntimeError("the lookup server stopped by itself (is the port in use?)")


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
    sock = socket.socket(socket.AF_INET6 if ":" in settings.lookup_host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.lookup_host, settings.lookup_port))
    sock.listen(4096)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    try:
        for index in range(settings.lookup_workers):
            child = context.Process(target=_worker, args=(settings, sock), name=f"lookup-{index}")
            child.start()
            workers.append(child)
        while not stop.wait(0.5):
            if any(not p.is_alive() for p in workers):
                log.error("a lookup worker exited; stopping the others")
                break
    finally:
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()
        for proc in workers:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        sock.close()
    if not stop.is_set():
        raise RuntimeError("a lookup worker exited unexpectedly")
