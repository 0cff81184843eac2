"""Stand-in of an email service provider's global-unsubscribe API (SendGrid-shaped).

``POST /v3/asm/suppressions/global`` ``{"recipient_emails": [...]}`` with
``Authorization: Bearer <token>``, in this order of checks:

* 401 wrong or missing token;
* 429 + ``Retry-After`` past ``rate_limit_per_second`` requests in the current second;
* 503 (+ ``Retry-After: 1``) for a random ``failure_rate`` share of requests;
* 400 malformed body, or more than 1,000 addresses;
* 400 ``{"errors": [{"field", "email", "message"}]}`` when the batch holds addresses the
  provider refuses (``rejected``): nothing of that request is applied (all or nothing);
* 400 ``{"error": message}`` naming no address when the batch holds an address of
  ``refused_unnamed`` (as real providers answer "invalid email in recipient_emails"):
  nothing of that request is applied, and the caller must find the address itself;
* 201 ``{"added": [...], "already_suppressed": [...]}``: idempotent, an address already
  on the list is reported as already suppressed. With ``garbage`` set (bytes or any JSON
  value), the addresses are added but the 201's body is that instead (a provider's bad data).

Opting back in: ``DELETE /v3/asm/suppressions/global/{email}`` (SendGrid's shape,
https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/delete-a-global-suppression)
-> 204 once removed, 404 ``{"error": "not found"}`` when the address is not on the list;
401, 429 and 503 as above.

Inspection (tests, humans): ``GET /v3/asm/suppressions/global`` lists the suppressed
addresses (``[{"email", "created"}]``, as the real API does); ``GET /_standin/stats``
counts requests by answer and how often each address arrived in an accepted request.
State is in memory.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from services.standins.web import Request, Response, error

PATH = "/v3/asm/suppressions/global"
STATS_PATH = "/_standin/stats"
MAX_BATCH = 1000
DEFAULT_REJECT_REASON = "address previously hard-bounced and cannot be added"


class FixedWindowLimiter:
    """At most ``limit`` calls per one-second window; 0 means unlimited."""

    def __init__(self, limit: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._monotonic = monotonic
        self._window = -1
        self._count = 0

    @property
    def used(self) -> int:
        """Calls admitted in the current window."""
        return self._count

    def admit(self) -> float | None:
        """None if admitted, else seconds until the window resets."""
        if self.limit <= 0:
            return None
        now = self._monotonic()
        window = math.floor(now)
        if window != self._window:
            self._window, self._count = window, 0
        if self._count >= self.limit:
            return window + 1 - now
        self._count += 1
        return None


class EmailProviderStandin:
    def __init__(
        self,
        token: str,
        failure_rate: float = 0.0,
        rate_limit_per_second: int = 0,
        retry_after_seconds: int = 1,
        rejected: Mapping[str, str] | Iterable[str] = (),
        refused_unnamed: Mapping[str, str] | None = None,
        garbage: Any = None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.failure_rate = failure_rate
        self.retry_after_seconds = retry_after_seconds
        self.rejected: dict[str, str] = (
            {k.lower(): v for k, v in rejected.items()}
            if isinstance(rejected, Mapping)
            else {e.strip().lower(): DEFAULT_REJECT_REASON for e in rejected}
        )
        self.refused_unnamed = {k.lower(): v for k, v in (refused_unnamed or {}).items()}
        self.garbage = garbage
        self._rng = rng or random.Random()
        self._limiter = FixedWindowLimiter(rate_limit_per_second, monotonic)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self.suppressed: dict[str, int] = {}  # email -> created (unix seconds)
        self.received: Counter[str] = Counter()  # email -> accepted requests that carried it
        self.answers: Counter[int] = Counter()  # HTTP status -> count (add calls)
        self.removed: Counter[str] = Counter()  # email -> times removed (opt-ins)

    # --- the app ------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self._lock:
            return self._route(request)

    def _route(self, request: Request) -> Response:
        if request.path == PATH and request.method == "POST":
            response = self._add(request)
            self.answers[response.status] += 1
            return response
        if request.path.startswith(PATH + "/") and request.method == "DELETE":
            response = self._remove(request)
            self.answers[response.status] += 1
            return response
        if request.path == PATH and request.method == "GET":
            if request.bearer_token() != self.token:
                return error(401, "authorization required")
            return Response(200, [{"email": e, "created": c} for e, c in self.suppressed.items()])
        if request.path == STATS_PATH and request.method == "GET":
            return Response(200, self.stats())
        return error(404, "not found")

    def _add(self, request: Request) -> Response:
        if request.bearer_token() != self.token:
            return error(401, "authorization required")
        wait = self._limiter.admit()
        if wait is not None:
            seconds = max(self.retry_after_seconds, math.ceil(wait))
            return Response(429, {"error": "too many requests"}, {"Retry-After": str(seconds)})
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return Response(503, {"error": "service temporarily unavailable"}, {"Retry-After": "1"})
        emails = _emails(request)
        if emails is None:
            return error(400, 'body must be {"recipient_emails": ["...", ...]}')
        if len(emails) > MAX_BATCH:
            return error(400, f"at most {MAX_BATCH} recipient_emails per request")
        refused = [e for e in emails if e.lower() in self.rejected]
        if refused:
            return Response(
                400,
                {
                    "errors": [
                        {"field": "recipient_emails", "email": e, "message": self.rejected[e.lower()]}
                        for e in refused
                    ]
                },
            )
        unnamed = [self.refused_unnamed[e.lower()] for e in emails if e.lower() in self.refused_unnamed]
        if unnamed:
            return error(400, unnamed[0])
        added, already = [], []
        now = int(self._wall_clock())
        for email in dict.fromkeys(e.lower() for e in emails):
            self.received[email] += 1
            if email in self.suppressed:
                already.append(email)
            else:
                self.suppressed[email] = now
                added.append(email)
        if self.garbage is not None:
            return Response(201, self.garbage)
        return Response(201, {"added": added, "already_suppressed": already})

    def _remove(self, request: Request) -> Response:
        if request.bearer_token() != self.token:
            return error(401, "authorization required")
        wait = self._limiter.admit()
        if wait is not None:
            seconds = max(self.retry_after_seconds, math.ceil(wait))
            return Response(429, {"error": "too many requests"}, {"Retry-After": str(seconds)})
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return Response(503, {"error": "service temporarily unavailable"}, {"Retry-After": "1"})
        email = unquote(request.path[len(PATH) + 1 :]).strip().lower()
        if self.suppressed.pop(email, None) is None:
            return error(404, "not found")
        self.removed[email] += 1
        return Response(204)

    def stats(self) -> dict[str, Any]:
        return {
            "answers": {str(k): v for k, v in sorted(self.answers.items())},
            "received": dict(self.received),
            "suppressed": len(self.suppressed),
            "removed": dict(self.removed),
        }


def _emails(request: Request) -> list[str] | None:
    try:
        body = request.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    emails = body.get("recipient_emails")
    if not isinstance(emails, list) or not all(isinstance(e, str) and "@" in e for e in emails):
        return None
    return [e.strip() for e in emails]


class EmailListStandin:
    """What the SendGrid and Mailgun stand-ins share: the API key they accept (changeable at
    run time, to test a refused key being fixed), the failures they can be told to produce
    (a share of 503s, a rate limit, addresses refused by name or refused without being
    named), and counters of what they received and answered. Calls hold ``_lock``."""

    default_reject_reason = "is not a valid email address"

    def __init__(
        self,
        api_key: str,
        failure_rate: float = 0.0,
        rate_limit_per_second: int = 0,
        rejected: Mapping[str, str] | Iterable[str] = (),
        refused_unnamed: Iterable[str] = (),
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.failure_rate = failure_rate
        self.rejected: dict[str, str] = (
            {k.lower(): v for k, v in rejected.items()}
            if isinstance(rejected, Mapping)
            else {e.strip().lower(): self.default_reject_reason for e in rejected}
        )
        self.refused_unnamed = {e.lower() for e in refused_unnamed}
        self._rng = rng or random.Random()
        self._limit = rate_limit_per_second
        self._limiter = FixedWindowLimiter(rate_limit_per_second, monotonic)
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.answers: Counter[int] = Counter()

    def set_api_key(self, api_key: str) -> None:
        with self._lock:
            self.api_key = api_key

    def set_limits(self, failure_rate: float, rate_limit_per_second: int) -> None:
        """Change the failure rate and rate limit at run time."""
        with self._lock:
            self.failure_rate = failure_rate
            self._limit = rate_limit_per_second
            self._limiter = FixedWindowLimiter(rate_limit_per_second, self._monotonic)
