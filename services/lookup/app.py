"""The lookup API over HTTP (Starlette): a thin layer over ``core`` (pure) and ``store``.

Every route is behind an API key (``OPTOUT_LOOKUP_API_KEYS``; several at once, so
keys rotate): missing or wrong -> 401. Raw identifiers are never logged nor counted: the
query string holds them, so there is no access log (uvicorn's is off) and logs name only
outcomes. ``/metrics``, ``/healthz`` and ``/readyz`` are on OPTOUT_METRICS_PORT, as for every
service (services/observability/health.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.common.logging import get_logger
from services.common.settings import Settings
from services.domain.subjects import ScopeState
from services.lookup import core
from services.lookup.store import StateReader, StateUnavailable

log = get_logger(__name__)

LOOKUP_REQUESTS = Counter(
    "optout_lookup_requests_total", "Lookup API requests by route and outcome.", ["route", "outcome"]
)
LOOKUP_IDENTIFIERS = Counter(
    "optout_lookup_identifiers_total",
    "Identifiers answered by the lookup API, by answer (suppressed, not_suppressed, invalid).",
    ["answer"],
)
LOOKUP_SECONDS = Histogram(
    "optout_lookup_seconds",
    "Time to answer a lookup API request (authorized ones), by route.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MAX_BODY_BYTES = 1_048_576  # 1,000 identifiers of up to 320 characters, with room to spare
JSON_HEADERS = {"cache-control": "no-store"}


class States(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def states(self, subjects: list[str]) -> dict[str, list[ScopeState]]: ...


def _json(code: int, body: object) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=code,
        media_type="application/json",
        headers=JSON_HEADERS,
    )


def _unavailable() -> Response:
    return JSONResponse({"error": "database_unavailable"}, status_code=503, headers={"retry-after": "1"})


def create_app(settings: Settings, reader: States | None = None) -> Starlette:
    states: States = reader or StateReader(
        settings.dsn(),
        settings.lookup_database_connections,
        prepared_statements=settings.database_prepared_statements,
    )
    keys = [k.get_secret_value().encode("utf-8") for k in settings.lookup_api_keys]
    region = settings.default_phone_region

    def refused(request: Request, route: str) -> Response | None:
        key = core.presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
        if core.authorized(key, keys):
            return None
        LOOKUP_REQUESTS.labels(route, "unauthorized").inc()
        return JSONResponse(
            {"error": "unauthorized", "detail": "an API key: Authorization: Bearer KEY or X-API-Key: KEY"},
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="optout-lookup"'},
        )

    async def lookup(request: Request) -> Response:
        if (denied := refused(request, "lookup")) is not None:
            return denied
        started = time.perf_counter()
        try:
            query = core.parse_query(dict(request.query_params), region)
        except core.BadRequest as exc:
            LOOKUP_REQUESTS.labels("lookup", "bad_request").inc()
            LOOKUP_IDENTIFIERS.labels("invalid").inc()
            return _json(400, exc.as_json())
        try:
            rows = await states.states([query.subject])
        except StateUnavailable:
            LOOKUP_REQUESTS.labels("lookup", "unavailable").inc()
            return _unavailable()
        body = core.single_response(query, rows)
        LOOKUP_REQUESTS.labels("lookup", "ok").inc()
        LOOKUP_IDENTIFIERS.labels("suppressed" if body["suppressed"] else "not_suppressed").inc()
        LOOKUP_SECONDS.labels("lookup").observe(time.perf_counter() - started)
        return _json(200, body)

    async def check(request: Request) -> Response:
        if (denied := refused(request, "check")) is not None:
            return denied
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            LOOKUP_REQUESTS.labels("check", "too_large").inc()
            return _json(413, {"error": "body_too_large", "detail": f"at most {MAX_BODY_BYTES} bytes"})
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            LOOKUP_REQUESTS.labels("check", "too_large").inc()
            return _json(413, {"error": "body_too_large", "detail": f"at most {MAX_BODY_BYTES} bytes"})
        try:
            batch = core.parse_batch(json.loads(raw), region)
        except (ValueError, UnicodeDecodeError) as exc:  # BadRequest and JSONDecodeError
            LOOKUP_REQUESTS.labels("check", "bad_request").inc()
            reason = exc.as_json() if isinstance(exc, core.BadRequest) else {"error": "invalid_json"}
            return _json(400, reason)
        try:
            rows = await states.states(batch.subjects)
        except StateUnavailable:
            LOOKUP_REQUESTS.labels("check", "unavailable").inc()
            return _unavailable()
        body = core.batch_response(batch, rows)
        LOOKUP_REQUESTS.labels("check", "ok").inc()
        results = body["results"]
        assert isinstance(results, list)
        suppressed = sum(1 for r in results if r.get("suppressed") is True)
        invalid = sum(1 for r in results if "error" in r)
        LOOKUP_IDENTIFIERS.labels("suppressed").inc(suppressed)
        LOOKUP_IDENTIFIERS.labels("invalid").inc(invalid)
        LOOKUP_IDENTIFIERS.labels("not_suppressed").inc(len(results) - suppressed - invalid)
        LOOKUP_SECONDS.labels("check").observe(time.perf_counter() - started)
        return _json(200, body)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await states.open()
        try:
            yield
        finally:
            await states.close()

    return Starlette(
        routes=[
            Route("/v1/suppressions", lookup, methods=["GET"]),
            Route("/v1/suppressions:check", check, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
