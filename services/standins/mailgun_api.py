"""Stand-in of Mailgun's unsubscribes API, following its documentation (pages cited in
``services.connectors.mailgun`` and ``docs/destinations.md``).

* ``POST /v3/{domain}/unsubscribes`` with a JSON array of up to 1,000
  ``{"address", "tags" (or the older "tag"), "created_at"}`` -> 200
  ``{"message": "N addresses have been added to the unsubscribes table"}`` (an address
  already there is updated);
* ``GET /v3/{domain}/unsubscribes/{address}`` -> 200 ``{"address", "tags", "created_at"}`` or
  404 ``{"message": "Address not found in unsubscribers table"}``;
* ``DELETE /v3/{domain}/unsubscribes/{address}`` -> 200 ``{"message": "Unsubscribe event has
  been removed", "address"}``, or 404 ``{"message": "Address not found in unsubscribers
  table"}`` when it is not there:
  https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/unsubscribe/delete-v3--domainid--unsubscribes--address-
* ``GET /v3/{domain}/unsubscribes?limit=N[&page=next&address=A]`` -> ``{"items", "paging"}``,
  pages ordered by address, ``paging.next`` continuing after the page's last address;
* HTTP Basic auth with user ``api`` and the API key, else 401 ``Forbidden`` (plain text, as
  Mailgun answers); other errors are ``{"message": ...}``.

Checks in order: 401; 429 past ``rate_limit_per_second`` requests in the current second
(``Retry-After`` in seconds plus ``X-RateLimit-Limit/-Remaining/-Reset``, Reset in epoch
milliseconds); a random ``failure_rate`` share answered 500 or 503; 400 for a malformed body
or more than 1,000 records; 400 naming the first address of ``rejected`` in its message
(nothing of that request applied); 400 naming no address for one of ``refused_unnamed``.
``set_api_key`` changes the accepted key at run time. State is in memory.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from services.standins.email_provider_api import EmailListStandin
from services.standins.web import Request, Response

PATH = re.compile(r"^/v3/([^/]+)/unsubscribes(?:/([^/]+))?$")
STATS_PATH = "/_standin/stats"
MAX_BATCH = 1000
DEFAULT_REJECT_REASON = "is not a valid address"


def message(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    """Mailgun's documented error body."""
    return Response(status, {"message": text}, dict(headers or {}))


def basic_password(request: Request) -> str | None:
    """The password of an ``Authorization: Basic`` header whose user is ``api``."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if user == "api" else None


class MailgunStandin(EmailListStandin):
    default_reject_reason = DEFAULT_REJECT_REASON

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unsubscribed: dict[str, dict[str, dict[str, Any]]] = {}  # domain -> address -> record

    def handle(self, request: Request) -> Response:
        with self._lock:
            if request.path == STATS_PATH and request.method == "GET":
                return Response(200, self.stats())
            response = self._api(request)
            self.answers[response.status] += 1
            return response

    def _api(self, request: Request) -> Response:
        if basic_password(request) != self.api_key:
            return Response(401, b"Forbidden")
        wait = self._limiter.admit()
        if wait is not None:
            now = self._wall_clock()
            return message(
                429,
                "Too many requests",
                {
                    "Retry-After": str(max(1, math.ceil(wait))),
                    "X-RateLimit-Limit": str(self._limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(math.ceil((now + wait) * 1000)),
                },
            )
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return message(self._rng.choice((500, 503)), "Internal server error")
        match = PATH.match(request.path)
        if match is None:
            return message(404, "Not Found")
        domain, address = match.group(1), match.group(2)
        if request.method == "POST" and address is None:
            return self._add(domain, request)
        if request.method == "GET" and address is not None:
            record = self.unsubscribed.get(domain, {}).get(unquote(address).lower())
            if record is None:
                return message(404, "Address not found in unsubscribers table")
            return Response(200, record)
        if request.method == "DELETE" and address is not None:
            email = unquote(address).lower()
            if self.unsubscribed.get(domain, {}).pop(email, None) is None:
                return message(404, "Address not found in unsubscribers table")
            return Response(200, {"message": "Unsubscribe event has been removed", "address": email})
        if request.method == "GET":
            return self._list(domain, parse_qs(request.query), request.headers.get("host", "localhost"))
        return message(405, "Method not allowed")

    def _add(self, domain: str, request: Request) -> Response:
        records = _records(request)
        if records is None:
            return message(400, "Invalid JSON: expected an array of unsubscribe records")
        if len(records) > MAX_BATCH:
            return message(400, f"Batch size should be less than {MAX_BATCH + 1}")
        for record in records:
            reason = self.rejected.get(record["address"].lower())
            if reason is not None:
                return message(400, f"{record['address']} {reason}")
        if any(r["address"].lower() in self.refused_unnamed for r in records):
            return message(400, "Invalid address in unsubscribe records")
        table = self.unsubscribed.setdefault(domain, {})
        for record in records:
            address = record["address"].lower()
            self.received[address] += 1
            table[address] = {"address": address, "tags": record["tags"], "created_at": record["created_at"]}
        return message(200, f"{len(records)} addresses have been added to the unsubscribes table")

    def _list(self, domain: str, query: Mapping[str, list[str]], host: str) -> Response:
        try:
            limit = min(1000, max(1, int(query.get("limit", ["100"])[0])))
        except ValueError:
            return message(400, "limit must be an integer")
        after = query.get("address", [""])[0].lower() if query.get("page", [""])[0] == "next" else ""
        ordered = sorted(self.unsubscribed.get(domain, {}).items())
        page = [r for a, r in ordered if a > after][:limit]
        base = f"http://{host}/v3/{domain}/unsubscribes?limit={limit}"
        last = page[-1]["address"] if page else after
        return Response(
            200,
            {
                "items": page,
                "paging": {
                    "first": base,
                    "next": f"{base}&page=next&address={quote(last)}",
                    "previous": base,
                    "last": f"{base}&page=last",
                },
            },
        )

    def stats(self) -> dict[str, Any]:
        return {
            "answers": {str(k): v for k, v in sorted(self.answers.items())},
            "received": dict(self.received),
            "unsubscribed": {d: len(t) for d, t in self.unsubscribed.items()},
        }


def _records(request: Request) -> list[dict[str, Any]] | None:
    try:
        body = request.json()
    except ValueError:
        return None
    if not isinstance(body, list):
        return None
    records = []
    for entry in body:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("address"), str)
            or "@" not in entry["address"]
        ):
            return None
        tags = entry.get("tags", [entry.get("tag", "*")])
        records.append(
            {"address": entry["address"].strip(), "tags": tags, "created_at": entry.get("created_at")}
        )
    return records
