"""/readyz of the HTTP services waits for their own port: the health endpoint starts first, so
without a check of the server's ``started`` flag a probe passed while the API still refused
connections (a fresh-clone CI run, 2026-12-02: ``test_lookup_service`` connected right after
/readyz said ready and was refused)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn

from services.common.settings import Settings
from services.lookup import service as lookup_service
from services.observability.health import HEALTH
from services.web import service as web_service

pytestmark = pytest.mark.unit


def _check_detail(name: str) -> dict[str, Any] | None:
    _ok, detail = HEALTH.readiness()
    checks: dict[str, dict[str, Any]] = detail["checks"]
    return checks.get(name)


@pytest.mark.parametrize(
    ("module", "check"),
    [(lookup_service, "lookup_http"), (web_service, "web_http")],
    ids=["lookup", "web"],
)
def test_ready_only_once_the_server_listens(monkeypatch: pytest.MonkeyPatch, module: Any, check: str) -> None:
    seen: list[dict[str, Any] | None] = []

    def fake_serve(server: uvicorn.Server, stop: threading.Event, name: str, sockets: object = None) -> None:
        seen.append(_check_detail(check))  # uvicorn not started yet
        server.started = True
        seen.append(_check_detail(check))  # listening

    def fake_config(_settings: Settings) -> uvicorn.Config:
        return uvicorn.Config(app=_no_app)

    monkeypatch.setattr(module, "serve_until_stopped", fake_serve)
    monkeypatch.setattr(module, "_config", fake_config)
    module.serve(Settings(), threading.Event())
    assert seen == [{"ok": False, "reason": "not listening yet"}, {"ok": True}]
    assert _check_detail(check) is None  # gone once the server stopped


async def _no_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    raise AssertionError("not called")
