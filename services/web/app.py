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
* ``GET <web_gpc_path>`` without a token: a browser's page. With ``Sec-GPC: 1`` a first-party
  device id cookie (set when absent) and one THIRD_PARTY_SHARING opt-out for that device
  (``device_id`` only); the page shows "Opt-Out Request Honored" or not yet, from PostgreSQL.
  Every applied signal is logged in ``gpc_signals`` (``services.web.gpclog``).
* ``POST /u/resubscribe`` (token in the body): an explicit opt-in (action OPT_IN) for scopes
  the link had stopped.

Every response carries the security headers; every other route but /healthz is rate
limited per client address (``services.web.ratelimit``: trusted proxies, IPv6 by /64);
bodies are size-limited; bad tokens get a 400 page and publish nothing.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date, datetime
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
from services.web.device import (
    device_event_id,
    device_from_cookies,
    new_device_id,
    set_cookie_header,
    subject_sha256,
    user_agent_family,
)
from services.web.gpclog import GpcSignal, SignalLog, SignalLogUnavailable
from services.web.publishing import AsyncPublisher, PublishUnavailable
from services.web.ratelimit import Network, RateLimiter, bucket_key, client_address, parse_trusted_proxies
from services.web.requests import (
    ChoiceError,
    FormError,
    check_actionable,
    device_gpc_fields,
    gpc_fields,
    is_one_click,
    latest_actions,
    one_click_fields,
    page_fields,
    parse_choice,
    parse_form,
    parse_resubscribe,
    resubscribable,
    resubscribe_fields,
)
from services.web.status import StatusReader, StatusUnavailable
from services.web.tokens import (
    MAX_ROUNDS,
    KeyRing,
    Purpose,
    TokenError,
    VerifiedToken,
    gpc_event_id,
    keyring_from_settings,
    optin_event_ids,
    token_event_ids,
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
GPC_LOG_FAILURES = Counter(
    "optout_web_gpc_log_failures_total",
    "Applied GPC signals the signal log (gpc_signals) could not record: the opt-out was "
    "published, but the proof for a regulator is missing.",
)
GPC_SEEN_MAX = 100_000
ROUND_LOOKUP_SECONDS = 1.0
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


class SignalLogger(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def record(self, signal: GpcSignal) -> None: ...


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
        signal_log: SignalLogger,
    ) -> None:
        self.settings = settings
        self.signal_log = signal_log
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
            round_ = await self._round(token)
            prepared = self.publisher.prepare(one_click_fields(token, self.clock.now(), round_))
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
        try:
            _allowed, offered, _round = await asyncio.wait_for(
                self._resubscribe_offers(token), ROUND_LOOKUP_SECONDS
            )
        except (StatusUnavailable, TimeoutError):
            offered = []  # the page still works; only "resubscribe" waits for the database
        return _html(pages.choose_page(request.path_params["token"], token.claims, resubscribe=offered))

    async def _history(self, token: VerifiedToken) -> list[pages.RequestView]:
        """The recorded requests through ``token`` (without a typed address), each marked
        opt-out or opt-in; ``StatusUnavailable`` when the database does not answer."""
        ids = token_event_ids(token)
        views = await self.statuses.requests(list(ids))
        return [replace(v, action=ids[v.event_id]) for v in views]

    async def _round(self, token: VerifiedToken) -> int:
        """Resubscribes recorded through ``token``: an opt-out after one gets a new event id
        (``request_event_id``). Without the database: 0, the id such links always had."""
        try:
            # Bounded: one-click must answer even while the database is slow or down.
            return len(
                await asyncio.wait_for(self.statuses.requests(optin_event_ids(token)), ROUND_LOOKUP_SECONDS)
            )
        except (StatusUnavailable, TimeoutError):
            log.warning("resubscribes of a link unknown (database unavailable); using round 0")
            return 0

    async def _until_recorded(self, event_id: str) -> None:
        """Wait (bounded) until intake has recorded ``event_id``. An opt-out through the
        same link takes its event id from the resubscribes recorded (``_round``): answering a
        resubscribe only once it is recorded keeps a quick "stop again" from reusing the
        earlier opt-out's id (which intake would take for that request, and drop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.web_resubscribe_record_wait_seconds
        while True:
            try:
                if await self.statuses.requests([event_id]):
                    return
            except StatusUnavailable:
                pass
            if loop.time() >= deadline:
                log.warning("resubscribe not yet recorded by intake; answering anyway", event_id=event_id)
                return
            await asyncio.sleep(0.05)

    async def _resubscribe_offers(
        self, token: VerifiedToken
    ) -> tuple[list[OptOutScope], list[OptOutScope], int]:
        """(what the person may opt back into now: each choice whose newest request through
        this link is an opt-out, or an opt-in (the same form posted again); of those, what the
        page offers: the stopped ones; the round of the next resubscribe)."""
        views = await self._history(token)
        round_ = _opt_ins(views)
        if round_ >= MAX_ROUNDS:
            return [], [], round_  # the page says nothing; contact us
        latest = latest_actions((v.requested_at, v.action, v.scopes) for v in views)
        stopped = [scope.value for scope, action in latest.items() if action == "OPT_OUT"]
        back = [scope.value for scope, action in latest.items() if action == "OPT_IN"]
        offered = resubscribable(token.claims, stopped)
        return resubscribable(token.claims, stopped + back), offered, round_

    async def resubscribe_posted(self, request: Request) -> Response:
        """``POST /u/resubscribe`` with the token (``t``) and the scopes to receive again:
        one OptOutRequested with action OPT_IN. Like the other forms it needs the token in
        the body (a forged cross-site form has none); a browser's ``Sec-Fetch-Site:
        cross-site`` is refused as well, as opting back in is the one choice here that
        restarts marketing."""
        if request.headers.get("sec-fetch-site", "") == "cross-site":
            WEB_REQUESTS.labels("resubscribe", "cross_site").inc()
            return _html(
                pages.message_page("Something went wrong", "Please use the form on our own page."), 403
            )
        got = await self._token_form(request, "resubscribe")
        if isinstance(got, Response):
            return got
        raw_token, token, form = got
        try:
            allowed, offered, round_ = await self._resubscribe_offers(token)
        except StatusUnavailable:
            WEB_REQUESTS.labels("resubscribe", "unavailable").inc()
            return _html(pages.UNAVAILABLE, 503, {"Retry-After": "5"})
        try:
            scopes = parse_resubscribe(form, allowed)
            prepared = self.publisher.prepare(resubscribe_fields(token, scopes, self.clock.now(), round_))
            check_actionable(prepared.request, self.settings.destinations)
        except ChoiceError as exc:
            WEB_REQUESTS.labels("resubscribe", "invalid").inc()
            page = pages.choose_page(raw_token, token.claims, resubscribe=offered, resubscribe_error=str(exc))
            return _html(page, 400)
        except (PoisonMessage, ValueError):
            WEB_REQUESTS.labels("resubscribe", "invalid").inc()
            message = "We cannot act on that choice for this link. Please contact us and we will help."
            page = pages.choose_page(raw_token, token.claims, resubscribe=offered, resubscribe_error=message)
            return _html(page, 400)
        try:
            await self._publish(prepared)
        except PublishUnavailable as exc:
            return _unavailable(exc, "resubscribe")
        WEB_REQUESTS.labels("resubscribe", "published").inc()
        record = prepared.record
        await self._until_recorded(str(record["event_id"]))
        return _html(
            pages.resubscribed_page(
                raw_token,
                token.claims,
                str(record["event_id"]),
                list(record["scopes"]),
                prepared.request.due_at,
            )
        )

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
            round_ = await self._round(token)
            prepared = self.publisher.prepare(page_fields(token, choice, self.clock.now(), round_))
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
            ids = token_event_ids(token)
            views = await self.statuses.requests(list(ids), refs, token.claims.customer_id)
            views = [replace(v, action=ids.get(v.event_id, v.action)) for v in views]
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
                            "action": v.action,
                        }
                        for v in views
                    ],
                }
            )
        return _html(pages.status_page(raw_token, token.claims, views, refs))

    # --- Global Privacy Control -----------------------------------------------
    async def gpc(self, request: Request) -> Response:
        """The GPC signal. With a customer token (POST body ``t`` or a Bearer header) it is
        the customer's: it changes state only on POST, or on a GET that is not a plain
        navigation (a script's ``fetch``). Without a token, a GET is a browser's: with
        ``Sec-GPC: 1`` it opts the browser's pseudonymous device id out (``_gpc_device``)."""
        if "t" in request.query_params:
            WEB_REQUESTS.labels("gpc", "token_in_url").inc()
            return JSONResponse(
                {"error": "send the token in the POST body (t=...) or a Bearer header, not in the URL"},
                400,
            )
        auth = request.headers.get("authorization", "")
        raw = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if request.method != "POST" and not raw:
            return await self._gpc_device(request)
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
        # A browser posting the site's form (no script) gets the page; scripts get JSON.
        html = request.method == "POST" and "text/html" in request.headers.get("accept", "")
        vary = {"Vary": "Sec-GPC"}
        signal = request.headers.get("sec-gpc", "").strip() == "1"
        if not signal:
            WEB_REQUESTS.labels("gpc", "no_signal").inc()
            if html:
                return await self._gpc_customer_page(token, raw, signal, recorded=False)
            return JSONResponse({"gpc": False, "recorded": False}, headers=vary)
        if request.method != "POST" and request.headers.get("sec-fetch-mode", "") == "navigate":
            WEB_REQUESTS.labels("gpc", "navigation").inc()
            return JSONResponse({"gpc": True, "recorded": False}, headers=vary)
        fields = gpc_fields(token, self.clock.now())
        event_id = str(fields["event_id"])
        published = False
        if event_id in self._gpc_seen:
            WEB_REQUESTS.labels("gpc", "already_sent").inc()
        else:
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
                if html:
                    return _html(pages.UNAVAILABLE, 503, {"Retry-After": str(exc.retry_after)})
                return JSONResponse({"error": "try again"}, 503, {"Retry-After": str(exc.retry_after)})
            self._remember_gpc(event_id)
            published = True
            WEB_REQUESTS.labels("gpc", "published").inc()
        customer_id = str(fields["customer_id"])
        await self._log_signal(
            request, "customer", customer_id, event_id, published, token.claims.jurisdiction
        )
        if html:
            return await self._gpc_customer_page(token, raw, signal, recorded=True)
        return JSONResponse({"gpc": True, "recorded": True, "event_id": event_id}, headers=vary)

    async def _gpc_customer_page(
        self, token: VerifiedToken, raw: str, signal: bool, recorded: bool
    ) -> Response:
        customer_id = token.claims.customer_id or ""
        event_ids = [gpc_event_id(customer_id, token.claims.jurisdiction)]
        state, views = await self._gpc_state(event_ids, recorded)
        page = pages.gpc_page(state, signal, views, self.settings.web_gpc_path, token=raw)
        return _html(page, headers={"Vary": "Sec-GPC"})

    async def _gpc_device(self, request: Request) -> Response:
        """``GET <gpc path>`` from a browser without a token: with ``Sec-GPC: 1``, a first-
        party device id (cookie, set when absent) and one THIRD_PARTY_SHARING opt-out for it
        (source GPC_SIGNAL, action OPT_OUT, one event id per device); the page shows whether
        it was honoured (CCPA regulations § 7025(c)(1) and (c)(6)). The signal itself is the
        request (§ 7025(c)(2): nothing more may be asked), and applying it again changes
        nothing, so a navigation is enough."""
        secure = self.settings.web_device_cookie_secure
        device = device_from_cookies(request.headers.get("cookie", ""), secure)
        signal = request.headers.get("sec-gpc", "").strip() == "1"
        headers = {"Vary": "Sec-GPC, Cookie"}
        recorded = device is not None
        if signal:
            if device is None:
                device = new_device_id()
                headers["Set-Cookie"] = set_cookie_header(
                    device, secure, self.settings.web_device_cookie_days
                )
            fields = device_gpc_fields(device, self.clock.now())
            event_id = str(fields["event_id"])
            published = False
            if event_id in self._gpc_seen:
                WEB_REQUESTS.labels("gpc_device", "already_sent").inc()
            else:
                try:
                    prepared = self.publisher.prepare(fields)
                    check_actionable(prepared.request, self.settings.destinations)
                except (PoisonMessage, ValueError) as exc:
                    # No destination of the destinations file takes a device id.
                    WEB_REQUESTS.labels("gpc_device", "not_actionable").inc()
                    log.error("a device's GPC opt-out cannot be routed", reason=str(exc))
                    return _html(pages.UNAVAILABLE, 503, {"Retry-After": "60"})
                try:
                    await self._publish(prepared)
                except PublishUnavailable as exc:
                    WEB_REQUESTS.labels("gpc_device", "unavailable").inc()
                    # Keep the cookie: the browser's next try is the same request.
                    return _html(pages.UNAVAILABLE, 503, {**headers, "Retry-After": str(exc.retry_after)})
                self._remember_gpc(event_id)
                published = True
                WEB_REQUESTS.labels("gpc_device", "published").inc()
            await self._log_signal(request, "device", device, event_id, published, None)
            recorded = True
        else:
            WEB_REQUESTS.labels("gpc_device", "no_signal").inc()
        event_ids = [device_event_id(device)] if device is not None else []
        state, views = await self._gpc_state(event_ids, recorded)
        if _wants_json(request):
            body: dict[str, object] = {"gpc": signal, "recorded": recorded, "state": state}
            if event_ids:
                body["event_id"] = event_ids[0]
            return JSONResponse(body, headers=headers)
        return _html(pages.gpc_page(state, signal, views, self.settings.web_gpc_path), headers=headers)

    async def _gpc_state(
        self, event_ids: Sequence[str], recorded: bool
    ) -> tuple[str, list[pages.RequestView]]:
        if not event_ids:
            return pages.gpc_state([], recorded), []
        try:
            views = await self.statuses.requests(event_ids)
        except StatusUnavailable:
            return pages.gpc_state([], recorded, status_known=False), []
        return pages.gpc_state(views, recorded or bool(views)), views

    def _remember_gpc(self, event_id: str) -> None:
        self._gpc_seen[event_id] = event_id
        while len(self._gpc_seen) > GPC_SEEN_MAX:
            self._gpc_seen.popitem(last=False)

    async def _log_signal(
        self,
        request: Request,
        kind: str,
        subject: str,
        event_id: str,
        published: bool,
        jurisdiction: str | None,
    ) -> None:
        """One row in ``gpc_signals`` (no raw id, no IP). The opt-out is already on the
        broker, so a failure here is counted and logged, not shown to the person."""
        signal = GpcSignal(
            seen_at=self.clock.now(),
            subject_kind=kind,
            subject_sha256=subject_sha256(kind, subject),
            event_id=event_id,
            published=published,
            user_agent_family=user_agent_family(request.headers.get("user-agent", "")),
            jurisdiction=jurisdiction,
        )
        try:
            await self.signal_log.record(signal)
        except SignalLogUnavailable as exc:
            GPC_LOG_FAILURES.inc()
            log.warning("applied GPC signal not logged", reason=str(exc), event_id=event_id)

    async def health(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def favicon(self, _request: Request) -> Response:
        return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})

    async def gpc_support(self, _request: Request) -> Response:
        """The GPC support resource (W3C GPC, section "The GPC Support Resource",
        https://www.w3.org/TR/gpc/): ``/.well-known/gpc.json`` says this origin honours the
        signal, with the date that statement last changed when one is configured."""
        return JSONResponse(
            gpc_support_resource(self.settings.web_gpc_last_update),
            headers={"Cache-Control": "public, max-age=86400"},
        )

    # --- refusals ----------------------------------------------------------------
    def _bad_token(self, route: str, exc: TokenError) -> Response:
        WEB_REQUESTS.labels(route, f"token_{exc.reason}").inc()
        log.info("token refused", route=route, reason=exc.reason)
        return _html(pages.BAD_LINK, 400)

    def _too_large(self, route: str) -> Response:
        WEB_REQUESTS.labels(route, "too_large").inc()
        return _html(pages.TOO_LARGE, 413)


def _opt_ins(views: Sequence[pages.RequestView]) -> int:
    return sum(1 for v in views if v.action == "OPT_IN")


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


GPC_SUPPORT_PATH = "/.well-known/gpc.json"


def gpc_support_resource(last_update: date | None) -> dict[str, bool | str]:
    """Pure: the body of ``/.well-known/gpc.json``: ``gpc`` true (this origin honours GPC) and,
    when known, ``lastUpdate`` as an RFC 3339 full-date."""
    body: dict[str, bool | str] = {"gpc": True}
    if last_update is not None:
        body["lastUpdate"] = last_update.isoformat()
    return body


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
    signal_log: SignalLogger | None = None,
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
    the_signal_log: SignalLogger = signal_log or SignalLog(
        settings.dsn(), prepared_statements=settings.database_prepared_statements
    )
    web = WebApp(
        settings,
        ring or keyring_from_settings(settings),
        the_publisher,
        the_statuses,
        the_clock,
        limiter,
        the_signal_log,
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        the_publisher.start()
        await the_statuses.open()
        await the_signal_log.open()
        try:
            yield
        finally:
            await run_in_threadpool(the_publisher.close)
            await the_statuses.close()
            await the_signal_log.close()

    gpc_path = settings.web_gpc_path
    routes = [
        Route("/healthz", web.health, methods=["GET"]),
        Route("/favicon.ico", web.favicon, methods=["GET"]),
        Route(GPC_SUPPORT_PATH, web.gpc_support, methods=["GET"]),
        Route("/u/choose", web.choose_posted, methods=["POST"]),
        Route("/u/status", web.status_posted, methods=["POST"]),
        Route("/u/resubscribe", web.resubscribe_posted, methods=["POST"]),
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
        exempt=frozenset({"/healthz", "/favicon.ico", GPC_SUPPORT_PATH}),
        trusted=web.trusted,
    )
    app.add_middleware(SecurityHeaders, headers=security_headers(settings))
    return app
