"""Running an ASGI app under uvicorn the way every HTTP service here does (web, inbound,
lookup): in a thread, stopped by our stop event (uvicorn installs no signal handlers off the
main thread), optionally as several worker processes sharing one listening socket."""

from __future__ import annotations

import multiprocessing
import socket
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import uvicorn

from services.common.logging import get_logger

log = get_logger(__name__)


def uvicorn_config(app: Any, host: str, port: int, *, date_header: bool = False) -> uvicorn.Config:
    """No access log (paths and query strings can carry tokens, emails and phones: each app
    counts and logs what matters), no server header, no proxy headers (each app decides whom
    to trust), a graceful drain of 10 s."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=date_header,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
        backlog=4096,
        limit_concurrency=10_000,
    )


class Readiness(Protocol):
    """What ``/readyz`` asks (``services.observability.health.HealthState``)."""

    def add_check(self, name: str, check: Callable[[], str | None]) -> None: ...

    def remove_check(self, name: str) -> None: ...


def serve_until_stopped(
    server: uvicorn.Server,
    stop: threading.Event,
    name: str,
    sockets: list[socket.socket] | None = None,
    readiness: Readiness | None = None,
) -> None:
    """Run ``server`` until ``stop`` is set (it drains in-flight requests); raise if it
    stopped by itself (e.g. its port was in use). With ``readiness``, the process's
    ``/readyz`` says not ready (check ``<name>_http``) until the server listens: the health
    endpoint starts first, and a probe passing before the port accepts connections sent
    traffic to a server that refused it."""
    check = f"{name}_http"
    if readiness is not None:
        readiness.add_check(check, lambda: None if server.started else "not listening yet")
    try:
        thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name=f"uvicorn-{name}")
        thread.start()
        while thread.is_alive() and not stop.wait(0.2):
            pass
        server.should_exit = True
        thread.join(30)
    finally:
        if readiness is not None:
            readiness.remove_check(check)
    if not stop.is_set():
        raise RuntimeError(f"the {name} server stopped by itself (is the port in use?)")


def run_worker_processes(
    name: str,
    host: str,
    port: int,
    count: int,
    worker: Callable[[Any, socket.socket], None],
    settings: Any,
    stop: threading.Event,
) -> None:
    """``count`` spawned processes each running ``worker(settings, sock)`` on one shared
    listening socket, until ``stop`` is set or one of them exits (then all are stopped and
    this raises)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    try:
        for index in range(count):
            child = context.Process(target=worker, args=(settings, sock), name=f"{name}-{index}")
            child.start()
            workers.append(child)
        while not stop.wait(0.5):
            if any(not p.is_alive() for p in workers):
                log.error(f"a {name} worker exited; stopping the others")
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
        raise RuntimeError(f"a {name} worker exited unexpectedly")
