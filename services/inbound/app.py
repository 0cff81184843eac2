"""The ASGI app of ``optout run inbound``: one POST route per configured provider.

Each route reads the body (size-limited), lets its provider verify and parse it (pure,
``services.inbound.base.Provider``), refuses a replayed token (Mailgun), publishes every
opt-out through the one validated path (``services.web.publishing.AsyncPublisher``: intake's
validation, then the broker's acknowledgement) and only then answers 200 with the
provider's reply. The broker did not acknowledge: 503 + Retry-After (providers retry; the
event ids are deterministic, so a retry is the same request). Forged, stale or replayed:
401, nothing published; a client past its budget of refusals
(``OPTOUT_INBOUND_REFUSALS_PER_MINUTE``, burst ``OPTOUT_INBOUND_REFUSAL_BURST``) gets 429 +
Retry-After before its signature is checked, so forgeries cannot burn the CPU that signature
checks cost; accepted deliveries never count against it. ``GET /healthz`` for probes;
/metrics and /readyz are on the metrics port like every service.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.common.clock import Clock, SystemClock
from services.common.errors import PoisonMessage
from services.common.logging import get_logger
from services.common.settings import Settings
from services.inbound.base import Delivery, Outcome, Provider, Rejected, inbound_event_id
from services.inbound.providers import providers_from_settings
from services.inbound.replay import ReplayStore, ReplayUnavailable
from services.publisher.publish import Prepared
from services.web.app import BodyTooLarge, Publisher, client_key, read_body
from services.web.publishing import AsyncPublisher, PublishUnavailable
from services.web.ratelimit import RateLimiter, parse_trusted_proxies

log = get_logger(__name__)

SERVICE = "inbound"

INBOUND_WEBHOOKS = Counter(
    "optout_inbound_webhooks_total",
    "Webhook deliveries by provider and outcome (accepted, ignored, bad_signature, stale, replay, "
    "malformed, unknown_topic, too_large, unavailable, throttled).",
    ["provider", "outcome"],
)
INBOUND_PUBLISHED = Counter(
    "optout_inbound_requests_published_total",
    "OptOutRequested published from provider webhooks, by provider and action.",
    ["provider", "action"],
)
INBOUND_INVALID = Counter(
    "optout_inbound_events_invalid_total",
    "Opt-out events intake would refuse (e.g. an invalid address), skipped, by provider.",
    ["provider"],
)
SNS_SUBSCRIPTIONS = Counter(
    "optout_inbound_sns_subscriptions_total",
    "SNS subscription confirmations received, by outcome (pending: an operator must confirm).",
    ["outcome"],
)
CONFIRM_TIMEOUT_SECONDS = 10.0


class ReplayMemory(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def seen(self, provider: str, token: str) -> bool: ...
    async def remember(self, provider: str, token: str, expires_at: datetime) -> None: ...


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return PlainTextResponse(text + "\n", status_code=status, headers=dict(headers or {}))


class InboundApp:
    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        replay: ReplayMemory,
        clock: Clock,
        confirm: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.replay = replay
        self.clock = clock
        self.confirm = confirm
        self.base_url = settings.inbound_public_url.rstrip("/")
        self.limit = settings.inbound_max_body_bytes
        self.token_ttl = timedelta(seconds=settings.inbound_max_age_seconds + settings.clock_skew_seconds)
        self.refusals = RateLimiter(
            settings.inbound_refusals_per_minute / 60.0, settings.inbound_refusal_burst, clock.monotonic
        )
        self.trusted = parse_trusted_proxies(settings.inbound_trusted_proxies)

    def route(self, provider: Provider) -> Route:
        async def endpoint(request: Request) -> Response:
            return await self.receive(provider, request)

        return Route(provider.path, endpoint, methods=["POST"], name=provider.name)

    def _url(self, request: Request) -> str:
        query = request.url.query
        return self.base_url + request.url.path + (f"?{query}" if query else "")

    async def receive(self, provider: Provider, request: Request) -> Response:
        name = provider.name
        client = client_key(request.scope, self.trusted)
        wait = self.refusals.wait(client)
        if wait > 0:
            INBOUND_WEBHOOKS.labels(name, "throttled").inc()
            return _text(429, "too many refused requests", {"Retry-After": str(max(1, math.ceil(wait)))})
        try:
            body = await read_body(request, self.limit)
        except BodyTooLarge:
            self.refusals.acquire(client)
            INBOUND_WEBHOOKS.labels(name, "too_large").inc()
            return _text(413, "request too large")
        headers = {k.lower(): v for k, v in request.headers.items()}
        now = self.clock.now()
        try:
            outcome = provider.receive(Delivery(self._url(request), headers, body), now)
            if outcome.replay_token is not None and await self.replay.seen(name, outcome.replay_token):
                raise Rejected("replay", "token already used")
        except Rejected as exc:
            self.refusals.acquire(client)
            INBOUND_WEBHOOKS.labels(name, exc.reason).inc()
            log.warning("webhook refused", provider=name, reason=exc.reason, detail=exc.detail)
            return _text(400 if exc.reason == "malformed" else 401, "refused")
        except ReplayUnavailable as exc:
            return self._unavailable(name, f"replay memory: {exc}")
        prepared = self._prepare(name, outcome)
        try:
            await asyncio.gather(*(self.publisher.publish(p) for p in prepared))
        except PublishUnavailable as exc:
            return self._unavailable(name, str(exc), exc.retry_after)
        for item in prepared:
            INBOUND_PUBLISHED.labels(name, item.record["action"]).inc()
        if outcome.replay_token is not None:
            try:
                await self.replay.remember(name, outcome.replay_token, now + self.token_ttl)
            except ReplayUnavailable as exc:  # published already: a retry is the same request
                log.warning("webhook token not remembered", provider=name, reason=str(exc))
        if outcome.confirm_url is not None:
            refused = await self._subscription(outcome)
            if refused is not None:
                return refused
        INBOUND_WEBHOOKS.labels(name, "accepted" if prepared else "ignored").inc()
        if prepared:
            log.info(
                "webhook published",
                provider=name,
                event_ids=[str(p.record["event_id"]) for p in prepared],
                ignored=outcome.ignored,
            )
        reply = outcome.reply
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type)

    def _prepare(self, name: str, outcome: Outcome) -> list[Prepared]:
        if outcome.invalid:
            INBOUND_INVALID.labels(name).inc(outcome.invalid)
            log.warning("webhook opt-out events skipped: incomplete", provider=name, count=outcome.invalid)
        prepared: list[Prepared] = []
        for opt_out in outcome.opt_outs:
            fields: dict[str, Any] = {
                **opt_out.fields,
                "event_id": inbound_event_id(name, opt_out.provider_event_id),
            }
            try:
                prepared.append(self.publisher.prepare(fields))
            except (PoisonMessage, ValueError) as exc:
                # Publishing it would only dead-letter it; the provider would retry forever.
                INBOUND_INVALID.labels(name).inc()
                log.warning(
                    "webhook event skipped: intake would refuse it",
                    provider=name,
                    event_id=fields["event_id"],
                    reason=exc.reason if isinstance(exc, PoisonMessage) else str(exc),
                )
        return prepared

    async def _subscription(self, outcome: Outcome) -> Response | None:
        """An SNS SubscriptionConfirmation: confirm it (GET SubscribeURL) when the settings
        say so, else log and count it for an operator to confirm."""
        url = outcome.confirm_url or ""
        if self.confirm is None:
            SNS_SUBSCRIPTIONS.labels("pending").inc()
            log.warning(
                "SNS subscription awaits confirmation: open the SubscribeURL, or set "
                "OPTOUT_INBOUND_SNS_CONFIRM_SUBSCRIPTIONS=true",
                topic=outcome.topic,
                subscribe_url=url,
            )
            return None
        try:
            answer = await self.confirm.get(url, timeout=CONFIRM_TIMEOUT_SECONDS)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            SNS_SUBSCRIPTIONS.labels("failed").inc()
            log.error("SNS subscription confirmation failed", topic=outcome.topic, error=type(exc).__name__)
            return _text(503, "try again", {"Retry-After": "30"})
        SNS_SUBSCRIPTIONS.labels("confirmed").inc()
        log.info("SNS subscription confirmed", topic=outcome.topic)
        return None

    def _unavailable(self, name: str, reason: str, retry_after: int = 5) -> Response:
        INBOUND_WEBHOOKS.labels(name, "unavailable").inc()
        log.warning("webhook not accepted; answering 503", provider=name, reason=reason)
        return _text(503, "try again", {"Retry-After": str(retry_after)})

    async def health(self, _request: Request) -> Response:
        return _text(200, "ok")


def create_app(
    settings: Settings,
    *,
    publisher: Publisher | None = None,
    replay: ReplayMemory | None = None,
    clock: Clock | None = None,
    providers: list[Provider] | None = None,
    confirm_client: httpx.AsyncClient | None = None,
) -> Starlette:
    """The inbound app; dependencies default to the real producer, database and clock
    (``confirm_client``: the HTTP client that confirms SNS subscriptions, when enabled)."""
    the_providers = providers if providers is not None else providers_from_settings(settings)
    the_publisher: Publisher = publisher or AsyncPublisher(settings, service=SERVICE)
    the_replay: ReplayMemory = replay or ReplayStore(
        settings.dsn(), prepared_statements=settings.database_prepared_statements
    )
    confirm = None
    if settings.inbound_sns_confirm_subscriptions:
        confirm = confirm_client or httpx.AsyncClient()
    inbound = InboundApp(settings, the_publisher, the_replay, clock or SystemClock(), confirm)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        the_publisher.start()
        await the_replay.open()
        try:
            yield
        finally:
            await run_in_threadpool(the_publisher.close)
            await the_replay.close()
            if confirm is not None:
                await confirm.aclose()

    routes = [Route("/healthz", inbound.health, methods=["GET"])]
    routes += [inbound.route(p) for p in the_providers]
    return Starlette(routes=routes, lifespan=lifespan)
