"""/readyz of the HTTP services waits for their own port: the health endpoint starts first, so
without a check of the server's ``started`` flag a probe passed while the API still refused
connections (a fresh-clone CI run, 2026-12-02: ``test_lookup_service`` connected right after
/readyz said ready and was refused)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn

from services.common.http_server import Readiness, serve_until_stopped
from services.common.settings import Settings
from services.lookup import service as lookup_service
from services.observability.health import HEALTH
from services.web import service as web_service


async def _no_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    raise AssertionError("not called")


def _check_detail(name: str) -> dict[str, Any] | None:
    _ok, detail = HEALTH.readiness()
    checks: dict[str, dict[str, Any]] = detail["checks"]
    return checks.get(name)


def test_not_ready_until_the_server_listens_and_the_check_goes_with_it() -> None:
    stop = threading.Event()
    seen: list[dict[str, Any] | None] = []

    class Server(uvicorn.Server):
        def run(self, sockets: list[socket.socket] | None = None) -> None:
            seen.append(_check_detail("api_http"))  # uvicorn not started yet
            self.started = True
            seen.append(_check_detail("api_http"))  # listening
            stop.set()

    serve_until_stopped(Server(uvicorn.Config(app=_no_app, log_config=None)), stop, "api", readiness=HEALTH)
    assert seen == [{"ok": False, "reason": "not listening yet"}, {"ok": True}]
    assert _check_detail("api_http") is None  # gone once the server stopped


@pytest.mark.parametrize("module", [lookup_service, web_service], ids=["lookup", "web"])
def test_the_http_services_tell_readyz(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    given: list[Readiness | None] = []

    def fake_serve(
        server: uvicorn.Server,
        stop: threading.Event,
        name: str,
        sockets: object = None,
        readiness: Readiness | None = None,
    ) -> None:
        given.append(readiness)

    def fake_config(_settings: Settings) -> uvicorn.Config:
        return uvicorn.Config(app=_no_app, log_config=None)

    monkeypatch.setattr(module, "serve_until_stopped", fake_serve)
    monkeypatch.setattr(module, "_config", fake_config)
    module.serve(Settings(), threading.Event())
    assert given == [HEALTH]
