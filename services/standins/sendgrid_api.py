"""Stand-in of Twilio SendGrid's v3 suppressions API, following its documentation
(pages cited in ``services.connectors.sendgrid`` and ``docs/destinations.md``).

* ``POST /v3/asm/suppressions/global`` ``{"recipient_emails": [...]}`` -> 201
  ``{"recipient_emails": [...]}`` (idempotent: an address already there is accepted again);
* ``POST /v3/asm/groups/{group_id}/suppressions`` (same bodies) -> 201;
* ``GET /v3/asm/suppressions/global/{email}`` -> 200 ``{"recipient_email": ...}`` or ``{}``;
* ``GET /v3/suppression/unsubscribes?limit=N&offset=M`` -> 200 ``[{"email", "created"}]``:
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/retrieve-all-global-suppressions
* ``DELETE /v3/asm/suppressions/global/{email}`` -> 204 No Content (the page documents only
  that answer; an address not on the list is answered 204 too, our assumption):
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/delete-a-global-suppression
* ``DELETE /v3/asm/groups/{group_id}/suppressions/{email}`` -> 204:
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-suppressions/delete-a-suppression-from-a-suppression-group
* ``Authorization: Bearer <api key>``, else 401; errors are ``{"errors": [{"field", "message"}]}``.

Checks in order: 401 wrong key; 429 past ``rate_limit_per_second`` requests in the current
second (with ``X-RateLimit-Limit/-Remaining/-Reset``, Reset in epoch seconds, as SendGrid
sends them; the three headers are on every answer when a limit is set); a random
``failure_rate`` share answered 500 or 503; 400 for a malformed body or more than 1,000
addresses; 400 naming each address of ``rejected`` in its error's message (nothing of that
request applied); 400 naming no address when the batch holds one of ``refused_unnamed``.

``set_api_key`` (or ``POST /_standin/api_key`` ``{"api_key": ...}``) changes the accepted key at
run time, as rotating a key in SendGrid does; ``GET /_standin/stats`` counts answers and how
often each address arrived in an accepted request. State is in memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from services.standins.email_provider_api import EmailListStandin
from services.standins.web import Request, Response

GLOBAL_PATH = "/v3/asm/suppressions/global"
LIST_PATH = "/v3/suppression/unsubscribes"
GROUP_PATH = re.compile(r"^/v3/asm/groups/(\d+)/suppressions$")
GROUP_MEMBER_PATH = re.compile(r"^/v3/asm/groups/(\d+)/suppressions/([^/]+)$")
KEY_PATH = "/_standin/api_key"
STATS_PATH = "/_standin/stats"
MAX_BATCH = 1000
DEFAULT_REJECT_REASON = "is not a valid email address"


def errors(
    status: int, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """SendGrid's documented error body."""
    return Response(status, {"errors": [{"field": field, "message": message}]}, dict(headers or {}))


class SendGridStandin(EmailListStandin):
    default_reject_reason = DEFAULT_REJECT_REASON

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.suppressed: dict[str, int] = {}  # email -> created (unix seconds)
        self.groups: dict[int, set[str]] = {}

    # --- the app ------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self._lock:
            if request.path == STATS_PATH and request.method == "GET":
                return Response(200, self.stats())
            if request.path == KEY_PATH and request.method == "POST":
                return self._set_key(request)
            response = self._api(request)
            self.answers[response.status] += 1
            return response

    def _set_key(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("api_key"), str):
            return errors(400, 'body must be {"api_key": "..."}')
        self.api_key = body["api_key"]
        return Response(204)

    def _api(self, request: Request) -> Response:
        if request.bearer_token() != self.api_key:
            return errors(401, "authorization required")
        wait = self._limiter.admit()
        headers = self._rate_headers(wait)
        if wait is not None:
            return errors(429, "too many requests", headers=headers)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            status = self._rng.choice((500, 503))
            return errors(status, "internal server error", headers=headers)
        group = GROUP_PATH.match(request.path)
        if request.method == "POST" and (request.path == GLOBAL_PATH or group):
            return self._add(request, int(group.group(1)) if group else None, headers)
        member = GROUP_MEMBER_PATH.match(request.path)
        if request.method == "DELETE" and (request.path.startswith(GLOBAL_PATH + "/") or member):
            if member:
                self.groups.get(int(member.group(1)), set()).discard(unquote(member.group(2)).lower())
            else:
                self.suppressed.pop(unquote(request.path[len(GLOBAL_PATH) + 1 :]).lower(), None)
            return Response(204, None, headers)
        if request.method == "GET" and request.path == LIST_PATH:
            return self._list(parse_qs(request.query), headers)
        if request.method == "GET" and request.path.startswith(GLOBAL_PATH + "/"):
            email = unquote(request.path[len(GLOBAL_PATH) + 1 :]).lower()
            body = {"recipient_email": email} if email in self.suppressed else {}
            return Response(200, body, headers)
        return errors(404, "resource not found", headers=headers)

    def _list(self, query: Mapping[str, list[str]], headers: dict[str, str]) -> Response:
        """``GET /v3/suppression/unsubscribes?limit&offset`` -> ``[{"email", "created"}]``
        (oldest first, as added):
        https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/retrieve-all-global-suppressions"""
        try:
            limit = int(query.get("limit", ["500"])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            return errors(400, "limit and offset must be integers", None, headers)
        if limit < 1 or offset < 0:
            return errors(400, "limit must be positive and offset not negative", None, headers)
        page = list(self.suppressed.items())[offset : offset + limit]
        return Response(200, [{"email": e, "created": c} for e, c in page], headers)

    def _rate_headers(self, wait: float | None) -> dict[str, str]:
        if self._limit <= 0:
            return {}
        now = self._wall_clock()
        reset = math.ceil(now + wait) if wait is not None else math.floor(now) + 1
        remaining = 0 if wait is not None else max(0, self._limit - self._limiter.used)
        return {
            "X-RateLimit-Limit": str(self._limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }

    def _add(self, request: Request, group: int | None, headers: dict[str, str]) -> Response:
        emails = _emails(request)
        if emails is None:
            return errors(
                400, "recipient_emails must be a list of email addresses", "recipient_emails", headers
            )
        if len(emails) > MAX_BATCH:
            return errors(
                400, f"at most {MAX_BATCH} recipient_emails per request", "recipient_emails", headers
            )
        refused = [e for e in emails if e.lower() in self.rejected]
        if refused:
            return Response(
                400,
                {
                    "errors": [
                        {"field": "recipient_emails", "message": f"{e} {self.rejected[e.lower()]}"}
                        for e in refused
                    ]
                },
                headers,
            )
        if any(e.lower() in self.refused_unnamed for e in emails):
            return errors(400, "invalid email address in recipient_emails", "recipient_emails", headers)
        now = int(self._wall_clock())
        unique = list(dict.fromkeys(e.lower() for e in emails))
        for email in unique:
            self.received[email] += 1
            if group is None:
                self.suppressed.setdefault(email, now)
            else:
                self.groups.setdefault(group, set()).add(email)
        return Response(201, {"recipient_emails": unique}, headers)

    def stats(self) -> dict[str, Any]:
        return {
            "answers": {str(k): v for k, v in sorted(self.answers.items())},
            "received": dict(self.received),
            "suppressed": len(self.suppressed),
            "groups": {str(g): len(m) for g, m in self.groups.items()},
        }


def _emails(request: Request) -> list[str] | None:
    try:
        body = request.json()
    except ValueError:
        return None
    emails = body.get("recipient_emails") if isinstance(body, dict) else None
    if not isinstance(emails, list) or not all(isinstance(e, str) and "@" in e for e in emails):
        return None
    return [e.strip() for e in emails]
