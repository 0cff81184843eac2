"""HTTP bits shared by the connectors that call a provider's API (httpx).

Pure helpers (status classification, Retry-After parsing, reason extraction) plus
``send``/``post_json``, which turn transport errors and transient answers into
``RetriableError`` (with the provider's Retry-After or rate-limit reset), a 401/403 into
``CredentialsRefused``, and hand back every other response for the connector to read.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from services.common.contract import AckStatus
from services.common.errors import RetriableError
from services.common.logging import get_logger, redact_text
from services.connectors.http_transport import HttpClientTransport
from services.connectors.kit import CredentialsRefused

log = get_logger(__name__)
T = TypeVar("T")

MAX_REASON_LENGTH = 300


class Verdict(StrEnum):
    OK = "OK"
    TRANSIENT = "TRANSIENT"  # retry the same call later
    CREDENTIALS = "CREDENTIALS"  # 401/403: our credentials are refused: CredentialsRefused, never reject
    CONFIGURATION = "CONFIGURATION"  # our URL is wrong: retry (an operator must act), never reject
    PERMANENT = "PERMANENT"  # the provider refuses this data: a rejection with its reason


_TRANSIENT_4XX = frozenset({408, 425, 429})
_CREDENTIALS_4XX = frozenset({401, 403})
_CONFIGURATION_4XX = frozenset({404, 405})
DEFAULT_CREDENTIALS_CHECK_SECONDS = 30.0


def classify_status(code: int) -> Verdict:
    """What an HTTP status means for the commands in the request."""
    if 200 <= code < 300:
        return Verdict.OK
    if code in _TRANSIENT_4XX or code >= 500:
        return Verdict.TRANSIENT
    if code in _CREDENTIALS_4XX:
        return Verdict.CREDENTIALS
    if code in _CONFIGURATION_4XX:
        return Verdict.CONFIGURATION
    if 400 <= code < 500:
        return Verdict.PERMANENT
    return Verdict.TRANSIENT  # 1xx/3xx from an API: something in between is misbehaving


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            return None
        return max(0.0, (moment - now).total_seconds())
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


def clean_reason(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    """A provider's reason made safe for an ack's ``detail``: one line, no raw PII, bounded."""
    one_line = " ".join(text.replace("\x00", " ").split())
    return redact_text(one_line)[:limit]


def _message_from(body: Any, depth: int = 0) -> str | None:
    if isinstance(body, dict):
        for key in ("message", "error", "reason", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value
        errors = body.get("errors")
        if isinstance(errors, list) and errors and depth < 2:
            return _message_from(errors[0], depth + 1)
    return None


def error_reason(response: httpx.Response) -> str:
    """``HTTP 400: <the provider's message>``."""
    message = _message_from(json_or_none(response))
    if message is None:
        message = response.text or response.reason_phrase
    return clean_reason(f"HTTP {response.status_code}: {message}")


def make_client(timeout_seconds: float, verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """An HTTP client for a provider; ``verify``: certificate verification (an SSLContext
    holding a private CA bundle, or True for the system's CAs). Its transport is
    ``HttpClientTransport`` (the standard library's ``http.client`` under httpx: a third of
    httpcore's CPU per call, issue #15)."""
    return httpx.Client(
        verify=verify,
        transport=HttpClientTransport(verify),
        timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
        headers={"User-Agent": "optout-connector/1", "Accept": "application/json"},
        follow_redirects=False,
    )


RetryAfter = Callable[[httpx.Response], float | None]


def retry_after_header(response: httpx.Response, now: datetime) -> float | None:
    """The standard ``Retry-After`` of an answer."""
    return parse_retry_after(response.headers.get("Retry-After"), now)


def send(
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    system: str,
    retry_after: RetryAfter,
    credentials_check_seconds: float = DEFAULT_CREDENTIALS_CHECK_SECONDS,
    *,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    passthrough: frozenset[int] = frozenset(),
) -> httpx.Response:
    """Send one request; return a 2xx or a permanent 4xx response. Raise
    ``CredentialsRefused`` for a 401/403 (checked again after ``credentials_check_seconds``)
    and ``RetriableError`` for everything else that may work later (``retry_after`` reads
    the provider's rate-limit headers). Statuses in ``passthrough`` (e.g. a lookup's 404) are
    returned as they are."""
    try:
        response = client.request(method, url, json=json, headers=headers)
    except httpx.TransportError as exc:
        raise RetriableError(f"{system} unreachable ({type(exc).__name__})") from exc
    except httpx.RequestError as exc:  # e.g. a body that fails its Content-Encoding: status unknown
        raise RetriableError(
            f"{system} sent an answer that could not be read ({type(exc).__name__})"
        ) from exc
    if response.status_code in passthrough:
        return response
    verdict = classify_status(response.status_code)
    if verdict is Verdict.TRANSIENT:
        raise RetriableError(
            f"{system} answered HTTP {response.status_code}", retry_after=retry_after(response)
        )
    if verdict is Verdict.CREDENTIALS:
        raise CredentialsRefused(
            f"{system} answered HTTP {response.status_code}: check its credentials",
            retry_after=credentials_check_seconds,
        )
    if verdict is Verdict.CONFIGURATION:
        log.error(
            "provider answered not found; check the connector's URL settings",
            system=system,
            status=response.status_code,
        )
        raise RetriableError(f"{system} answered HTTP {response.status_code}: check its URL")
    return response


def post_json(
    client: httpx.Client,
    url: str | httpx.URL,
    token: SecretStr,
    body: Any,
    now: datetime,
    system: str,
    credentials_check_seconds: float = DEFAULT_CREDENTIALS_CHECK_SECONDS,
) -> httpx.Response:
    """POST ``body`` with a Bearer token (see ``send``; Retry-After honoured)."""
    return send(
        client,
        "POST",
        url,
        system,
        lambda response: retry_after_header(response, now),
        credentials_check_seconds,
        json=body,
        headers={"Authorization": f"Bearer {token.get_secret_value()}"},
    )


def json_or_none(response: httpx.Response) -> Any:
    """The JSON body of an answer, or None when it is not JSON (a partner's bad data never
    raises: the connector turns it into a rejection with its reason)."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        return None


def undocumented_answer(system: str, expected: str) -> str:
    """The rejection reason for a 2xx whose body is not the documented shape."""
    return clean_reason(f"{system}: 2xx answer is not the documented {expected}; outcome unknown")


_ADDRESS_TOKEN = re.compile(r"[^\s@<>\"',;:()\[\]]+@[^\s@<>\"',;:()\[\]]+")


def addresses_named(text: str, sent: Sequence[str]) -> list[str]:
    """The addresses of ``sent`` that ``text`` (a provider's error message) names as whole
    tokens, compared case-insensitively ("a@x.com" is not named by "aa@x.com")."""
    named = {token.rstrip(".").lower() for token in _ADDRESS_TOKEN.findall(text)}
    return [e for e in sent if e.lower() in named]


def split_halves(items: list[T]) -> tuple[list[T], list[T]]:
    """The two halves a batch refused as a whole is split into to find the refused items."""
    half = len(items) // 2
    return items[:half], items[half:]


@dataclass(frozen=True)
class RefusedWhole:
    """A call refused as a whole (a permanent 4xx) naming no item; ``reason`` is why."""

    reason: str


# What one call answered: the refused items' reasons by key (empty: all accepted), or a
# refusal of the whole call.
CallAnswer = dict[str, str] | RefusedWhole


def find_refusals(
    items: list[T], key: Callable[[T], str], call: Callable[[list[T]], CallAnswer]
) -> dict[str, str]:
    """Send ``items`` with ``call`` and return every refused item's reason by ``key``.

    A call refused whole (a 4xx naming no item) is split in halves and each half sent
    again; a half accepted whole proves the refusal lies in the other half, which is then
    split without being sent. One refused item among 1,000 costs ~log2(1000) more calls,
    and only an item refused when sent alone gets the whole-call reason. ``call`` raises
    ``RetriableError`` for anything that may work later (the caller's batch is retried)."""
    refusals: dict[str, str] = {}

    def send(part: list[T], refused_inside: bool = False) -> bool:
        """Whether ``part`` was accepted whole."""
        if refused_inside and len(part) > 1:
            split(part)
            return False
        answer = call(part)
        if not isinstance(answer, RefusedWhole):
            refusals.update(answer)
            return not answer
        if len(part) == 1:  # refused alone: this one is it
            refusals[key(part[0])] = answer.reason
            return False
        split(part)
        return False

    def split(part: list[T]) -> None:
        left, right = split_halves(part)
        left_accepted = send(left)
        # A left half accepted whole means the refusal lies in the right half.
        send(right, refused_inside=left_accepted)

    if items:
        send(items)
    return refusals


# An email provider's answer for one address: its status and, when refused, why.
AddressResult = tuple[AckStatus, str | None]


def add_addresses(
    addresses: list[str],
    post: Callable[[list[str]], httpx.Response],
    accepted: Callable[[list[str], Any], dict[str, AddressResult]],
    refused_named: Callable[[list[str], Any], dict[str, str]],
    system: str,
    results: dict[str, AddressResult],
) -> None:
    """Add one call's worth of ``addresses`` to an email provider's suppression list with
    ``post``, recording a result for each in ``results`` (also when a ``RetriableError``
    stops it half-way: the caller keeps what is known).

    A 2xx body is read by ``accepted``. A refusal naming addresses (``refused_named`` of the
    error body) rejects those and sends the rest again; a refusal naming none splits the
    batch in halves (a half accepted whole proves the refusal is in the other one, which is
    split without being sent), so only an address refused alone is rejected, with the
    provider's reason."""

    def add(remaining: list[str], refused_inside: bool = False) -> bool:
        """Whether the first call accepted every address."""
        first_call = True
        while remaining:
            if refused_inside and len(remaining) > 1:
                split(remaining)
                return False
            response = post(remaining)
            if response.is_success:
                answered = accepted(remaining, json_or_none(response))
                results.update(answered)
                return first_call and all(r[0] is not AckStatus.REJECTED for r in answered.values())
            first_call = refused_inside = False
            refused = refused_named(remaining, json_or_none(response))
            if refused:
                results.update({e: (AckStatus.REJECTED, r) for e, r in refused.items()})
                remaining = [e for e in remaining if e not in refused]
                continue
            if len(remaining) == 1:  # refused alone: this address is the one
                results[remaining[0]] = (
                    AckStatus.REJECTED,
                    clean_reason(f"{system}: {error_reason(response)}"),
                )
                return False
            split(remaining)
            return False
        return False

    def split(part: list[str]) -> None:
        left, right = split_halves(part)
        left_accepted = add(left)
        add(right, refused_inside=left_accepted)

    add(addresses)


NOT_LISTED = "was not on the provider's suppression list"


def removal_result(response: httpx.Response, system: str) -> AddressResult:
    """One address's result of an un-suppress call (``send`` with ``passthrough={404}``):
    a 2xx removed it (APPLIED); a 404 means it was not on the list, which is what an opt-in
    wants (APPLIED, saying so); any other permanent 4xx is the provider refusing it."""
    if response.is_success:
        return (AckStatus.APPLIED, None)
    if response.status_code == 404:
        return (AckStatus.APPLIED, NOT_LISTED)
    return (AckStatus.REJECTED, clean_reason(f"{system}: {error_reason(response)}"))
