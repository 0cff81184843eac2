"""The ASGI app: RFC 8058 one-click unsubscribe, the page for people, status, and GPC.

Routes (TOKEN is minted by ``services.web.tokens.mint``):

* ``POST /u/TOKEN`` with ``List-Unsubscribe=One-Click``: publishes one OptOutRequested
  (source ONE_CLICK, the token's scopes) and answers 200 only after the broker acked it;
  503 + Retry-After when it did not. No cookies, redirects or scripts. Rate limited per
  token (mailbox providers post for many recipients from few addresses).
* ``GET /u/TOKEN``: the page (never changes anything); ``POST /u/choose`` with the token
  in the body (``t``): its form (source EMAIL_LINK), answered with what was received and
  what happens next. ``POST /u/TOKEN/choose`` is still accepted (pages already open).
* ``POST /u/status`` (token in the body) or ``GET /u/TOKEN/status``: pending / confirmed /
  needs attention / not yet received, as HTML, or JSON with ``Accept: application/json``.
* ``POST <web_gpc_path>`` with ``Sec-GPC: 1`` and a GPC customer token (body ``t`` or
  ``Authorization: Bearer``), or ``GET`` with the Bearer header from a script (never a plain
  navigation, never a token in the URL): one THIRD_PARTY_SHARING opt-out (source
  GPC_SIGNAL) per customer and jurisdiction.

Every response carries the security headers; every other route but /healthz is rate
limited per client address (``services.web.ratelimit``: trusted proxies, IPv6 by /64);
bodies are size-limited; bad tokens get a 400 page and publish nothing.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.clock import Clock, SystemClock
from services.common.contract import Scope as OptOutScope
from services.common.errors import PoisonMessage
from services.common.logging import get_logger
from services.common.settings import Settings
from services.publisher.publish import Prepared
from services.web import pages
from services.web.publishing import AsyncPublisher, PublishUnavailable
from services.web.ratelimit import Network, RateLimiter, bucket_key, client_address, parse_trusted_proxies
from services.web.requests import (
    ChoiceError,
    FormError,
    check_actionable,
    gpc_fields,
    is_one_click,
    one_click_fields,
    page_fields,
    parse_choice,
    parse_form,
)
from services.web.status import StatusReader, StatusUnavailable
from services.web.tokens import (
    KeyRing,
    Purpose,
    TokenError,
    VerifiedToken,
    candidate_event_ids,
    keyring_from_settings,
    verify,
)

log = get_logger(__name__)

WEB_REQUESTS = Counter(
    "optout_web_requests_total", "Web requests by route and outcome.", ["route", "outcome"]
)
WEB_PUBLISH_SECONDS = Histogram(
    "optout_web_publish_seconds",
    "Time from produce to broker acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GPC_SEEN_MAX = 100_000
MAX_REFS = 8
# ``POST /u/TOKEN`` (one-click): limited per token by the handler, not per address.
ONE_CLICK_PATH = re.compile(r"^/u/[^/]+\.[^/]+$")


class Publisher(Protocol):
    def start(self) -> None: ...
    def prepare(self, fields: Mapping[str, Any]) -> Prepared: ...
    async def publish(self, prepared: Prepared) -> None: ...
    def close(self, timeout: float = 10.0) -> None: ...


class Statuses(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def requests(
        self, event_ids: Sequence[str], refs: Sequence[str] = (), customer_id: str | None = None
    ) -> list[pages.RequestView]: ...


class BodyTooLarge(Exception):
    pass


def security_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-security-policy", pages.CONTENT_SECURITY_POLICY.encode()),
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
    ]
    if settings.web_public_url.lower().startswith("https://"):
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


class SecurityHeaders:
    """Pure ASGI middleware: the security headers (and no-store) on every HTTP response."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = list(message.get("headers", []))
                names = {name.lower() for name, _ in existing}
                extra = [(n, v) for n, v in self.headers if n not in names]
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": existing + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_key(scope: Scope, trusted: Sequence[Network]) -> str:
    """The rate-limit bucket of the client that sent this request (see ``ratelimit``)."""
    peer = scope.get("client")
    forwarded = [v.decode("latin-1") for n, v in scope.get("headers", []) if n == b"x-forwarded-for"]
    return bucket_key(client_address(peer[0] if peer else None, forwarded, trusted))


def too_many(wait: float) -> HTMLResponse:
    WEB_REQUESTS.labels("any", "rate_limited").inc()
    return HTMLResponse(
        pages.TOO_MANY, status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))}
    )


class RateLimit:
    """Pure ASGI middleware: 429 + Retry-After when a client's bucket is empty.

    One-click POSTs pass through: their handler limits them per token."""

    def __init__(
        self, app: ASGIApp, limiter: RateLimiter, exempt: frozenset[str], trusted: Sequence[Network]
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.exempt = exempt
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and ONE_CLICK_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        wait = self.limiter.acquire(client_key(scope, self.trusted))
        if wait > 0:
            await too_many(wait)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge()
    return bytes(body)


def _html(content: str, status: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(content, status_code=status, headers=dict(headers or {}))


def _unavailable(exc: PublishUnavailable, route: str) -> HTMLResponse:
    WEB_REQUESTS.labels(route, "unavailable").inc()
    log.warning("request not published; answering 503", route=route, reason=str(exc))
    return _html(pages.UNAVAILABLE, 503, {"Retry-After": str(exc.retry_after)})


class WebApp:
    """The handlers, with their dependencies injected (tests pass their own clock etc.)."""

    def __init__(
        self,
        settings: Settings,
        ring: KeyRing,
        publisher: Publisher,
        statuses: Statuses,
        clock: Clock,
        limiter: RateLimiter,
    ) -> None:
        self.settings = settings
        self.ring = ring
        self.publisher = publisher
        self.statuses = statuses
        self.clock = clock
        self.limiter = limiter
        self.trusted = parse_trusted_proxies(settings.web_trusted_proxies)
        self.limit = settings.web_max_body_bytes
        self._gpc_seen: OrderedDict[str, str] = OrderedDict()

    def _token(self, request: Request, purpose: Purpose = Purpose.UNSUBSCRIBE) -> VerifiedToken:
        return self._verify(str(request.path_params["token"]), purpose)

    def _verify(self, raw: str, purpose: Purpose = Purpose.UNSUBSCRIBE) -> VerifiedToken:
        return verify(self.ring, raw, self.clock.now(), purpose)

    def _limited(self, key: str) -> Response | None:
        wait = self.limiter.acquire(key)
        return too_many(wait) if wait > 0 else None

    async def _publish(self, prepared: Prepared) -> None:
        started = time.perf_counter()
        await self.publisher.publish(prepared)
        WEB_PUBLISH_SECONDS.observe(time.perf_counter() - started)

    async def _form(self, request: Request) -> dict[str, list[str]]:
        body = await read_body(request, self.limit)
        return parse_form(body, request.headers.get("content-type", ""))

    # --- RFC 8058 one-click ----------------------------------------------------
    async def one_click(self, request: Request) -> Response:
        try:
            token = self._token(request)
        except TokenError as exc:
            # Made-up tokens count against the sender's address, not a fresh bucket each.
            return self._limited(client_key(request.scope, self.trusted)) or self._bad_token("one_click", exc)
        refused = self._limited(f"token:{token.token_id}")
        if refused is not None:
            return refused
        try:
            form = await self._form(request)
        except BodyTooLarge:
            return self._too_large("one_click")
        except FormError:
            form = {}
        if not is_one_click(form):
            WEB_REQUESTS.labels("one_click", "not_one_click").inc()
            return PlainTextResponse(
                "Expected the body List-Unsubscribe=One-Click (RFC 8058).\n", status_code=400
            )
        try:
            prepared = self.publisher.prepare(one_click_fields(token, self.clock.now()))
            check_actionable(prepared.request, self.settings.destinations)
        except (PoisonMessage, ValueError) as exc:
            WEB_REQUESTS.labels("one_click", "invalid").inc()
            log.warning("one-click token names a request intake would refuse", reason=str(exc))
            return _html(pages.BAD_LINK, 400)
        try:
            await self._publish(prepared)
        except PublishUnavailable as exc:
            return _unavailable(exc, "one_click")
        WEB_REQUESTS.labels("one_click", "published").inc()
        return PlainTextResponse("Unsubscribed.\n")

    # --- the page for people ---------------------------------------------------
    async def page(self, request: Request) -> Response:
        try:
            token = self._token(request)
        except TokenError as exc:
            return self._bad_token("page", exc)
        WEB_REQUESTS.labels("page", "shown").inc()
        return _html(pages.choose_page(request.path_params["token"], token.claims))

    async def choose(self, request: Request) -> Response:
        """``POST /u/TOKEN/choose`` (pages rendered before the token moved into the body)."""
        got = await self._token_form(request, "choose", str(request.path_params["token"]))
        return got if isinstance(got, Response) else await self._choose(*got)

    async def choose_posted(self, request: Request) -> Response:
        """``POST /u/choose``: the page's forms, with the token in the body (``t``)."""
        got = await self._token_form(request, "choose")
        return got if isinstance(got, Response) else await self._choose(*got)

    async def _token_form(
        self, request: Request, route: str, path_token: str | None = None
    ) -> tuple[str, VerifiedToken, dict[str, list[str]]] | Response:
        """The posted form and its verified token (from the path, else the form's ``t``), or
        the page that says what was wrong."""
        try:
            form = await self._form(request)
            raw_token = path_token if path_token is not None else _first(form, "t")
            return raw_token, self._verify(raw_token), form
        except TokenError as exc:
            return self._bad_token(route, exc)
        except BodyTooLarge:
            return self._too_large(route)
        except FormError:
            return _html(pages.message_page("Something went wrong", "We could not read the form."), 400)

    async def _choose(self, raw_token: str, token: VerifiedToken, form: dict[str, list[str]]) -> Response:
        selected = [s for s in OptOutScope if s.value in form.get("scope", [])]
        typed = {k: v[0] for k, v in form.items() if k.startswith("addr_") and v}
        try:
            choice = parse_choice(form, token)
            prepared = self.publisher.prepare(page_fields(token, choice, self.clock.now()))
            check_actionable(prepared.request, self.settings.destinations)
        except ChoiceError as exc:
            WEB_REQUESTS.labels("choose", "invalid").inc()
            return _html(pages.choose_page(raw_token, token.claims, str(exc), selected, typed), 400)
        except (PoisonMessage, ValueError):
            WEB_REQUESTS.labels("choose", "invalid").inc()
            message = (
                "We cannot act on that choice for this link. Please choose something else, "
                "or contact us and we will help."
            )
            return _html(pages.choose_page(raw_token, token.claims, message, selected, typed), 400)
        try:
            await self._publish(prepared)
        except PublishUnavailable as exc:
            return _unavailable(exc, "choose")
        WEB_REQUESTS.labels("choose", "published").inc()
        record = prepared.record
        return _html(
            pages.received_page(
                raw_token,
                token.claims,
                str(record["event_id"]),
                list(record["scopes"]),
                prepared.request.due_at,
            )
        )

    async def status(self, request: Request) -> Response:
        """``GET /u/TOKEN/status[?ref=EVENT_ID]``."""
        raw_token = str(request.path_params["token"])
        try:
            token = self._verify(raw_token)
        except TokenError as exc:
            return self._bad_token("status", exc)
        refs = request.query_params.getlist("ref")
        return await self._status(request, raw_token, token, refs, request.query_params.get("format", ""))

    async def status_posted(self, request: Request) -> Response:
        """``POST /u/status`` with the token (``t``) and references (``ref``) in the body."""
        got = await self._token_form(request, "status")
        if isinstance(got, Response):
            return got
        raw_token, token, form = got
        return await self._status(request, raw_token, token, form.get("ref", []), _first(form, "format"))

    async def _status(
        self, request: Request, raw_token: str, token: VerifiedToken, refs: Sequence[str], format_: str
    ) -> Response:
        wants_json = "application/json" in request.headers.get("accept", "") or format_ == "json"
        refs = [ref for ref in refs if ref][:MAX_REFS]
        try:
            views = await self.statuses.requests(candidate_event_ids(token), refs, token.claims.customer_id)
        except StatusUnavailable:
            WEB_REQUESTS.labels("status", "unavailable").inc()
            if wants_json:
                return JSONResponse({"error": "status unavailable"}, 503, {"Retry-After": "5"})
            return _html(
                pages.message_page(
                    "Status unavailable",
                    "We cannot look up the status right now. Please try again in a minute.",
                ),
                503,
                {"Retry-After": "5"},
            )
        WEB_REQUESTS.labels("status", "shown").inc()
        if wants_json:
            return JSONResponse(
                {
                    "state": pages.overall_state(views),
                    "requests": [
                        {
                            "event_id": v.event_id,
                            "state": v.state,
                            "scopes": list(v.scopes),
                            "requested_at": _iso(v.requested_at),
                            "due_at": _iso(v.due_at),
                            "confirmed_at": _iso(v.confirmed_at),
                            "destinations_done": v.destinations_done,
                            "destinations_total": v.destinations_total,
                        }
                        for v in views
                    ],
                }
            )
        return _html(pages.status_page(raw_token, token.claims, views, refs))

    # --- Global Privacy Control -----------------------------------------------
    async def gpc(self, request: Request) -> Response:
        """The GPC signal. It changes state only on POST, or on a GET that is not a plain
        navigation (a script's ``fetch`` with the Bearer header): browsers with GPC on send
        ``Sec-GPC: 1`` with every request, so following a link is no request to act."""
        if "t" in request.query_params:
            WEB_REQUESTS.labels("gpc", "token_in_url").inc()
            return JSONResponse(
                {"error": "send the token in the POST body (t=...) or a Bearer header, not in the URL"},
                400,
            )
        auth = request.headers.get("authorization", "")
        raw = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if request.method == "POST" and not raw:
            try:
                raw = _first(await self._form(request), "t")
            except BodyTooLarge:
                return JSONResponse({"error": "request too large"}, 413)
            except FormError:
                return JSONResponse({"error": "unreadable form"}, 400)
        try:
            token = verify(self.ring, raw, self.clock.now(), Purpose.GPC)
        except TokenError as exc:
            WEB_REQUESTS.labels("gpc", f"token_{exc.reason}").inc()
            return JSONResponse({"error": "invalid token"}, 400)
        vary = {"Vary": "Sec-GPC"}
        if request.headers.get("sec-gpc", "").strip() != "1":
            WEB_REQUESTS.labels("gpc", "no_signal").inc()
            return JSONResponse({"gpc": False, "recorded": False}, headers=vary)
        if request.method != "POST" and request.headers.get("sec-fetch-mode", "") == "navigate":
            WEB_REQUESTS.labels("gpc", "navigation").inc()
            return JSONResponse({"gpc": True, "recorded": False}, headers=vary)
        fields = gpc_fields(token, self.clock.now())
        event_id = str(fields["event_id"])
        if event_id in self._gpc_seen:
            WEB_REQUESTS.labels("gpc", "already_sent").inc()
            return JSONResponse({"gpc": True, "recorded": True, "event_id": event_id}, headers=vary)
        try:
            prepared = self.publisher.prepare(fields)
            check_actionable(prepared.request, self.settings.destinations)
        except (PoisonMessage, ValueError):
            WEB_REQUESTS.labels("gpc", "invalid").inc()
            return JSONResponse({"error": "invalid token"}, 400)
        try:
            await self._publish(prepared)
        except PublishUnavailable as exc:
            WEB_REQUESTS.labels("gpc", "unavailable").inc()
            return JSONResponse({"error": "try again"}, 503, {"Retry-After": str(exc.retry_after)})
        self._gpc_seen[event_id] = event_id
        while len(self._gpc_seen) > GPC_SEEN_MAX:
            self._gpc_seen.popitem(last=False)
        WEB_REQUESTS.labels("gpc", "published").inc()
        return JSONResponse({"gpc": True, "recorded": True, "event_id": event_id}, headers=vary)

    async def health(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def favicon(self, _request: Request) -> Response:
        return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})

    # --- refusals ----------------------------------------------------------------
    def _bad_token(self, route: str, exc: TokenError) -> Response:
        WEB_REQUESTS.labels(route, f"token_{exc.reason}").inc()
        log.info("token refused", route=route, reason=exc.reason)
        return _html(pages.BAD_LINK, 400)

    def _too_large(self, route: str) -> Response:
        WEB_REQUESTS.labels(route, "too_large").inc()
        return _html(pages.TOO_LARGE, 413)


def _first(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0].strip()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


async def _not_found(_request: Request, _exc: Exception) -> Response:
    return _html(pages.NOT_FOUND, 404)


def create_app(
    settings: Settings,
    *,
    publisher: Publisher | None = None,
    statuses: Statuses | None = None,
    clock: Clock | None = None,
    ring: KeyRing | None = None,
) -> Starlette:
    """The web app; dependencies default to the real producer, database and system clock."""
    the_clock = clock or SystemClock()
    the_publisher: Publisher = publisher or AsyncPublisher(settings)
    the_statuses: Statuses = statuses or StatusReader(
        settings.dsn(), prepared_statements=settings.database_prepared_statements
    )
    limiter = RateLimiter(
        settings.web_rate_limit_per_second, settings.web_rate_limit_burst, the_clock.monotonic
    )
    web = WebApp(
        settings, ring or keyring_from_settings(settings), the_publisher, the_statuses, the_clock, limiter
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        the_publisher.start()
        await the_statuses.open()
        try:
            yield
        finally:
            await run_in_threadpool(the_publisher.close)
            await the_statuses.close()

    gpc_path = settings.web_gpc_path
    routes = [
        Route("/healthz", web.health, methods=["GET"]),
        Route("/favicon.ico", web.favicon, methods=["GET"]),
        Route("/u/choose", web.choose_posted, methods=["POST"]),
        Route("/u/status", web.status_posted, methods=["POST"]),
        Route("/u/{token}", web.page, methods=["GET"]),
        Route("/u/{token}", web.one_click, methods=["POST"]),
        Route("/u/{token}/choose", web.choose, methods=["POST"]),
        Route("/u/{token}/status", web.status, methods=["GET"]),
        Route(gpc_path, web.gpc, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: _not_found})
    app.add_middleware(
        RateLimit,
        limiter=limiter,
        exempt=frozenset({"/healthz", "/favicon.ico"}),
        trusted=web.trusted,
    )
    app.add_middleware(SecurityHeaders, headers=security_headers(settings))
    return app
