"""One small HTTP server per service: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` (liveness): every consume loop of the process has polled within its limit,
half of ``max.poll.interval.ms`` by default, so a stuck loop is restarted before the
broker evicts it from the group. A process without a consume loop (web) is live while
it serves. ``/readyz`` (readiness): the broker answers a metadata request, the database
(for services that use one) answers ``SELECT 1`` and every consume loop has started
polling; a member with no partitions assigned is still ready. Checks are cached for a
few seconds so frequent probes cost nothing. Both answer 200 or 503 with a JSON body
saying which check failed.

Kubernetes::

    livenessProbe:  {httpGet: {path: /healthz, port: metrics}, periodSeconds: 10, failureThreshold: 3}
    readinessProbe: {httpGet: {path: /readyz,  port: metrics}, periodSeconds: 10, failureThreshold: 2}
    startupProbe:   {httpGet: {path: /healthz, port: metrics}, periodSeconds: 5, failureThreshold: 24}

(liveness failure after 150 s of silence + 30 s of failed probes stays below the
default ``max.poll.interval.ms`` of 300 s).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.common.db import first_line
from services.common.kafka import make_admin
from services.common.logging import get_logger
from services.common.settings import Settings

log = get_logger(__name__)

LIVENESS_FRACTION = 0.5  # of max.poll.interval.ms
CHECK_CACHE_SECONDS = 5.0
Check = Callable[[], str | None]  # None: fine; else the reason it is not


@dataclass
class _Loop:
    max_silence: float
    last_beat: float
    beats: int = 0


class HealthState:
    """Heartbeats of the process's consume loops and its readiness checks (thread-safe)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._loops: dict[str, _Loop] = {}
        self._checks: dict[str, Check] = {}

    def register_loop(self, name: str, max_silence: float) -> None:
        with self._lock:
            self._loops[name] = _Loop(max_silence, self._monotonic())

    def unregister_loop(self, name: str) -> None:
        with self._lock:
            self._loops.pop(name, None)

    def beat(self, name: str) -> None:
        with self._lock:
            loop = self._loops.get(name)
            if loop is not None:
                loop.last_beat = self._monotonic()
                loop.beats += 1

    def add_check(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check

    def remove_check(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = self._monotonic()
        with self._lock:
            loops = dict(self._loops)
        detail: dict[str, Any] = {}
        ok = True
        for name, loop in sorted(loops.items()):
            silent = now - loop.last_beat
            fine = silent <= loop.max_silence
            ok = ok and fine
            detail[name] = {
                "ok": fine,
                "seconds_since_poll": round(silent, 3),
                "limit_seconds": loop.max_silence,
            }
        return ok, {"status": "ok" if ok else "failing", "loops": detail}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            checks = dict(self._checks)
            loops = dict(self._loops)
        detail: dict[str, Any] = {}
        ok = True
        for name, check in sorted(checks.items()):
            reason = check()
            detail[name] = {"ok": reason is None, **({"reason": reason} if reason else {})}
            ok = ok and reason is None
        for name, loop in sorted(loops.items()):
            started = loop.beats > 0
            detail[f"loop:{name}"] = {"ok": started, **({} if started else {"reason": "not polling yet"})}
            ok = ok and started
        return ok, {"status": "ready" if ok else "not ready", "checks": detail}


HEALTH = HealthState()


def liveness_limit(settings: Settings) -> float:
    return settings.max_poll_interval_ms / 1000 * LIVENESS_FRACTION


class CachedCheck:
    """Run ``probe`` at most once per ``ttl`` seconds; remember its last answer."""

    def __init__(
        self, probe: Check, ttl: float = CHECK_CACHE_SECONDS, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._probe = probe
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._at: float | None = None
        self._answer: str | None = None

    def __call__(self) -> str | None:
        with self._lock:
            now = self._monotonic()
            if self._at is None or now - self._at >= self._ttl:
                self._answer = self._probe()
                self._at = now
            return self._answer


def kafka_check(settings: Settings, timeout: float = 3.0) -> Check:
    admin = make_admin(settings)

    def probe() -> str | None:
        try:
            admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            return f"broker did not answer: {exc.args[0].str() if exc.args else exc}"
        return None

    return CachedCheck(probe)


def database_check(settings: Settings, timeout: int = 3) -> Check:
    def probe() -> str | None:
        try:
            with psycopg.connect(
                settings.dsn(), connect_timeout=timeout, application_name="optout-readyz"
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return f"database: {first_line(exc)}"
        return None

    return CachedCheck(probe)


class _Handler(BaseHTTPRequestHandler):
    state: HealthState = HEALTH

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/livez"):
            ok, body = self.state.liveness()
            self._json(200 if ok else 503, body)
        elif path == "/readyz":
            ok, body = self.state.readiness()
            self._json(200 if ok else 503, body)
        else:
            self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return  # probes every few seconds: not worth a log line each


class HealthServer:
    """``ThreadingHTTPServer`` on ``host:port`` (port 0: any free port) in a daemon thread."""

    def __init__(self, port: int, host: str = "0.0.0.0", state: HealthState = HEALTH) -> None:
        handler = type("Handler", (_Handler,), {"state": state})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_health(
    settings: Settings,
    needs_db: bool,
    state: HealthState = HEALTH,
    port: int | None = None,
    needs_kafka: bool = True,
) -> HealthServer | None:
    """Register the broker (and database) readiness checks; serve on ``metrics_port``
    (or ``port``). Returns None when the port setting is 0 (endpoint disabled)."""
    if needs_kafka:
        state.add_check("kafka", kafka_check(settings))
    if needs_db:
        state.add_check("database", database_check(settings))
    chosen = settings.metrics_port if port is None else port
    if port is None and not chosen:
        return None
    server = HealthServer(chosen, state=state)
    log.info(
        "metrics and health endpoint listening", port=server.port, paths=["/metrics", "/healthz", "/readyz"]
    )
    return server
