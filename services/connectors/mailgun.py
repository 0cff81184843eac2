"""Connector kind ``mailgun``: Mailgun's unsubscribes API (httpx).

Calls (each as documented on the page named next to it):

* ``POST /v3/{domain}/unsubscribes`` with a JSON array of up to 1,000 records
  ``[{"address", "tags": ["*"], "created_at"}]`` (``*``: every tag, i.e. all of the domain's
  mail; ``created_at`` in RFC 2822 form) -> 200 ``{"message": ...}``; 400 ``{"message": ...}``:
  https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/unsubscribe/post-v3--domainid--unsubscribes
* ``GET /v3/{domain}/unsubscribes/{address}`` -> 200 ``{"address", "tags", "created_at"}`` or
  404 ``{"message": ...}`` (``read_back``):
  https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/unsubscribe/get-v3--domainid--unsubscribes--address-
* ``GET /v3/{domain}/unsubscribes?limit=N`` -> ``{"items": [...], "paging": {"next", ...}}``,
  following ``paging.next`` until a page is empty (``list_unsubscribed``):
  https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/unsubscribe/get-v3--domainid--unsubscribes
* ``DELETE /v3/{domain}/unsubscribes/{address}`` -> 200 ``{"message", "address"}``; 404
  ``{"message"}`` when the address is not on the list (opting back in, one address a call;
  "delivery to the deleted email address resumes until it unsubscribes again"):
  https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/unsubscribe/delete-v3--domainid--unsubscribes--address-
* HTTP Basic authentication, user ``api``, password the API key; base URL
  ``https://api.mailgun.net`` (US) or ``https://api.eu.mailgun.net`` (EU):
  https://documentation.mailgun.com/docs/mailgun/api-reference/authentication

What an answer means for the commands:

* opt-ins: 200 -> APPLIED; 404 -> APPLIED, "was not on the provider's suppression list";
  400 -> REJECTED with Mailgun's message.
* 200: every address sent is APPLIED (adding an address already unsubscribed updates it; the
  API has no "already suppressed" answer).
* 400 whose message names an address of the batch: that address is REJECTED with Mailgun's
  message and the rest re-sent; a 400 naming none splits the batch to find the refused
  addresses, so only an address refused alone is REJECTED.
* 401/403: ``CredentialsRefused`` (nothing rejected; partitions paused; checked again every
  ``connector_credentials_check_seconds``).
* 429 (waiting ``Retry-After``, else until ``X-RateLimit-Reset``), 5xx, timeouts: transient.
  Mailgun's reference does not spell out its rate-limit headers for this call; the reset is
  read as epoch milliseconds, epoch seconds or seconds from now by its magnitude.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, SecretStr

from services.common.clock import Clock, SystemClock
from services.common.contract import AckStatus, Destination
from services.common.errors import RetriableError
from services.common.settings import Settings
from services.connectors.email_provider import Result, apply_by_address
from services.connectors.http import (
    DEFAULT_CREDENTIALS_CHECK_SECONDS,
    add_addresses,
    addresses_named,
    clean_reason,
    error_reason,
    json_or_none,
    make_client,
    parse_retry_after,
    removal_result,
    send,
)
from services.connectors.kinds import OPTIONS_CONFIG, parse_options, require_credential
from services.connectors.kit import Command, Connector, Outcome

KIND = "mailgun"
MAX_BATCH = 1000
SYSTEM = "Mailgun"
BASE_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}


class MailgunOptions(BaseModel):
    """A ``mailgun`` destination's settings."""

    model_config = OPTIONS_CONFIG
    domain: str = Field(min_length=1, pattern=r"^[A-Za-z0-9.-]+$", description="The sending domain.")
    region: Literal["us", "eu"] = "us"
    base_url: str | None = Field(None, pattern=r"^https?://", description="Overrides region's URL.")
    timeout: float = Field(30.0, gt=0, description="HTTP timeout in seconds.")

    def url(self) -> str:
        return self.base_url or BASE_URLS[self.region]


def rate_limit_wait(response: httpx.Response, now: datetime) -> float | None:
    """Seconds to wait after a 429: ``Retry-After``, else ``X-RateLimit-Reset``."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
    if retry_after is not None:
        return retry_after
    raw = response.headers.get("X-RateLimit-Reset")
    try:
        reset = float(raw) if raw is not None else float("nan")
    except ValueError:
        return None
    if reset != reset or reset in (float("inf"), float("-inf")) or reset < 0:
        return None
    if reset > 1e11:  # epoch milliseconds
        return max(0.0, reset / 1000 - now.timestamp())
    if reset > 1e9:  # epoch seconds
        return max(0.0, reset - now.timestamp())
    return reset


def basic_auth(user: str, password: SecretStr) -> str:
    """The HTTP Basic ``Authorization`` value Mailgun documents (user ``api``)."""
    token = base64.b64encode(f"{user}:{password.get_secret_value()}".encode()).decode("ascii")
    return f"Basic {token}"


def named_refusals(sent: Sequence[str], body: Any) -> dict[str, str]:
    """Addresses of ``sent`` that a 400 ``{"message": ...}`` names."""
    message = body.get("message") if isinstance(body, Mapping) else None
    if not isinstance(message, str):
        return {}
    reason = clean_reason(f"{SYSTEM}: {message}")
    return {e: reason for e in addresses_named(message, sent)}


class MailgunConnector(Connector):
    def __init__(
        self,
        destination: str,
        api_key: SecretStr,
        client: httpx.Client,
        domain: str,
        base_url: str = BASE_URLS["us"],
        clock: Clock | None = None,
        credentials_check_seconds: float = DEFAULT_CREDENTIALS_CHECK_SECONDS,
    ) -> None:
        self.destination = destination
        self.api_key = api_key
        self.client = client
        self.domain = domain
        self.base_url = base_url.rstrip("/")
        self.path = f"/v3/{quote(domain, safe='')}/unsubscribes"
        self.clock = clock or SystemClock()
        self.credentials_check_seconds = credentials_check_seconds

    def close(self) -> None:
        self.client.close()

    def _request(
        self, method: str, url: str, body: Any = None, passthrough: frozenset[int] = frozenset()
    ) -> httpx.Response:
        now = self.clock.now()
        return send(
            self.client,
            method,
            url,
            SYSTEM,
            lambda response: rate_limit_wait(response, now),
            self.credentials_check_seconds,
            json=body,
            headers={"Authorization": basic_auth("api", self.api_key)},
            passthrough=passthrough,
        )

    # --- reconciliation ----------------------------------------------------------------
    def read_back(self, email: str) -> bool:
        """Is ``email`` on the domain's unsubscribe list? (``RetriableError`` if unknown.)"""
        response = self._request(
            "GET", f"{self.base_url}{self.path}/{quote(email, safe='@')}", passthrough=frozenset({404})
        )
        if response.status_code == 404:
            return False
        body = json_or_none(response)
        if not response.is_success or not isinstance(body, Mapping):
            raise RetriableError(f"{SYSTEM} read-back answered {error_reason(response)}")
        return str(body.get("address") or "").lower() == email.lower()

    def list_unsubscribed(self, page_size: int = 1000) -> Iterator[str]:
        """Every address on the domain's unsubscribe list, page after page."""
        url: str | None = f"{self.base_url}{self.path}?limit={page_size}"
        seen: set[str] = set()
        while url is not None and url not in seen:
            seen.add(url)
            response = self._request("GET", url)
            body = json_or_none(response)
            items = body.get("items") if isinstance(body, Mapping) else None
            if not response.is_success or not isinstance(items, list):
                raise RetriableError(f"{SYSTEM} list answered {error_reason(response)}")
            if not items:
                return
            for item in items:
                if isinstance(item, Mapping) and isinstance(item.get("address"), str):
                    yield item["address"]
            paging = body.get("paging") if isinstance(body, Mapping) else None
            following = paging.get("next") if isinstance(paging, Mapping) else None
            url = following if isinstance(following, str) and following else None

    # --- apply -------------------------------------------------------------------------
    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        return apply_by_address(commands, self._add, MAX_BATCH, self._remove)

    def _remove(self, address: str) -> Result:
        url = f"{self.base_url}{self.path}/{quote(address, safe='@')}"
        return removal_result(self._request("DELETE", url, passthrough=frozenset({404})), SYSTEM)

    def _records(self, addresses: Sequence[str]) -> list[dict[str, Any]]:
        created = format_datetime(self.clock.now(), usegmt=True)
        return [{"address": a, "tags": ["*"], "created_at": created} for a in addresses]

    def _add(self, addresses: list[str], results: dict[str, Result]) -> None:
        def post(part: list[str]) -> httpx.Response:
            return self._request("POST", self.base_url + self.path, self._records(part))

        def accepted(sent: list[str], _body: Any) -> dict[str, Result]:
            return {e: (AckStatus.APPLIED, None) for e in sent}

        add_addresses(addresses, post, accepted, named_refusals, SYSTEM, results)


def build(destination: Destination, settings: Settings) -> MailgunConnector:
    """The connector of a ``mailgun`` destination (options and ``api_key`` credential)."""
    options = parse_options(MailgunOptions, destination)
    return MailgunConnector(
        destination.id,
        require_credential(destination, "api_key"),
        make_client(options.timeout),
        options.domain,
        base_url=options.url(),
        credentials_check_seconds=settings.connector_credentials_check_seconds,
    )
