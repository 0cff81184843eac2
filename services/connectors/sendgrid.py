"""Connector kind ``sendgrid``: Twilio SendGrid's v3 suppressions API (httpx).

Calls (each as documented on the page named next to it):

* ``POST /v3/asm/suppressions/global`` ``{"recipient_emails": [...]}`` -> 201
  ``{"recipient_emails": [...]}`` (the addresses now globally suppressed; adding an address
  already there is accepted again, so the API has no "already suppressed" answer):
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/add-recipient-addresses-to-the-global-suppression-group
* ``POST /v3/asm/groups/{group_id}/suppressions`` (same bodies), when the destination's
  ``group_id`` option is set, after the global call:
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-suppressions/add-suppressions-to-a-suppression-group
* ``GET /v3/asm/suppressions/global/{email}`` -> 200 ``{"recipient_email": ...}`` when
  suppressed, ``{}`` when not (``read_back``, for reconciliation):
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/retrieve-a-global-suppression
* ``GET /v3/suppression/unsubscribes?limit=N&offset=M`` -> 200 ``[{"email", "created"}]``,
  every globally suppressed address, page by page (``list_suppressed``, for ``optout
  reconcile``; a page shorter than ``limit`` is the last):
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/retrieve-all-global-suppressions
* Authentication ``Authorization: Bearer <api key>``; errors
  ``{"errors": [{"field", "message"}]}``; rate limiting: 429 with ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds), honoured as the wait:
  https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits
  https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/responses

Opting back in (``action: OPT_IN``), one address per call:

* ``DELETE /v3/asm/suppressions/global/{email}`` -> 204:
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/delete-a-global-suppression
* ``DELETE /v3/asm/groups/{group_id}/suppressions/{email}`` -> 204, when ``group_id`` is set,
  after the global call:
  https://www.twilio.com/docs/sendgrid/api-reference/suppressions-suppressions/delete-a-suppression-from-a-suppression-group
* 204 -> APPLIED; 404 -> APPLIED, "was not on the provider's suppression list"; another 4xx
  -> REJECTED with SendGrid's message; 401/403, 429, 5xx as below.

What an answer means for the commands:

* 201: every address the reply lists is APPLIED; one it does not list is REJECTED with that
  reason (the outcome is unknown; a person looks).
* 400: an error whose ``message`` or ``field`` names an address of the batch rejects only
  that address (the rest are sent again); a 400 naming none splits the batch to find the
  refused addresses (see ``services.connectors.email_provider``), so only an address refused
  alone is REJECTED, with SendGrid's message.
* 401/403: ``CredentialsRefused``: nothing is rejected; the kit pauses the partitions and
  tries again every ``connector_credentials_check_seconds``.
* 429 (wait until ``X-RateLimit-Reset``), 5xx, timeouts: transient; outcomes found so far are
  kept (``IncompleteBatch``).

Batch size: SendGrid's pages do not state a limit for these calls; we send at most
``MAX_BATCH`` (1,000) addresses per request, the size its other suppression calls use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, SecretStr

from services.common.clock import Clock, SystemClock
from services.common.contract import AckStatus, Destination
from services.common.errors import RetriableError
from services.common.settings import Settings
from services.connectors.email_provider import Result, apply_by_address, listed_emails
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

KIND = "sendgrid"
GLOBAL_PATH = "/v3/asm/suppressions/global"
LIST_PATH = "/v3/suppression/unsubscribes"
GROUP_PATH = "/v3/asm/groups/{group_id}/suppressions"
MAX_BATCH = 1000
SYSTEM = "SendGrid"


class SendGridOptions(BaseModel):
    """A ``sendgrid`` destination's settings."""

    model_config = OPTIONS_CONFIG
    base_url: str = Field("https://api.sendgrid.com", pattern=r"^https?://")
    group_id: int | None = Field(None, ge=1, description="Also add to this unsubscribe group.")
    timeout: float = Field(30.0, gt=0, description="HTTP timeout in seconds.")


def rate_limit_wait(response: httpx.Response, now: datetime) -> float | None:
    """Seconds until SendGrid's ``X-RateLimit-Reset`` (epoch seconds); else Retry-After."""
    reset = response.headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            at = float(reset.strip())
        except ValueError:
            at = float("nan")
        if at == at and at not in (float("inf"), float("-inf")):
            return max(0.0, at - now.timestamp())
    return parse_retry_after(response.headers.get("Retry-After"), now)


def listed(sent: Sequence[str], body: Any) -> dict[str, Result]:
    """Per-address result of a 201 ``{"recipient_emails": [...]}``."""
    emails = body.get("recipient_emails") if isinstance(body, Mapping) else None
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        reason = clean_reason(
            f"{SYSTEM}: 2xx answer is not the documented {{recipient_emails}}; outcome unknown"
        )
        return {e: (AckStatus.REJECTED, reason) for e in sent}
    confirmed = {e.lower() for e in emails}
    missing = clean_reason(f"{SYSTEM}: 2xx answer did not list the address; outcome unknown")
    return {
        e: (AckStatus.APPLIED, None) if e.lower() in confirmed else (AckStatus.REJECTED, missing)
        for e in sent
    }


def named_refusals(sent: Sequence[str], body: Any) -> dict[str, str]:
    """Addresses of ``sent`` that a 4xx ``{"errors": [{"field", "message"}]}`` names."""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if not isinstance(errors, list):
        return {}
    found: dict[str, str] = {}
    for error in errors:
        if not isinstance(error, Mapping):
            continue
        message = str(error.get("message") or "refused")
        for address in addresses_named(f"{error.get('field') or ''} {message}", sent):
            found.setdefault(address, clean_reason(f"{SYSTEM}: {message}"))
    return found


class SendGridConnector(Connector):
    def __init__(
        self,
        destination: str,
        api_key: SecretStr,
        client: httpx.Client,
        base_url: str = "https://api.sendgrid.com",
        group_id: int | None = None,
        clock: Clock | None = None,
        credentials_check_seconds: float = DEFAULT_CREDENTIALS_CHECK_SECONDS,
    ) -> None:
        self.destination = destination
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.client = client
        self.group_id = group_id
        self.clock = clock or SystemClock()
        self.credentials_check_seconds = credentials_check_seconds

    def close(self) -> None:
        self.client.close()

    # --- HTTP --------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, body: Any = None, passthrough: frozenset[int] = frozenset()
    ) -> httpx.Response:
        now = self.clock.now()
        return send(
            self.client,
            method,
            self.base_url + path,
            SYSTEM,
            lambda response: rate_limit_wait(response, now),
            self.credentials_check_seconds,
            json=body,
            headers={"Authorization": f"Bearer {self.api_key.get_secret_value()}"},
            passthrough=passthrough,
        )

    def read_back(self, email: str) -> bool:
        """Is ``email`` on the global suppression list? (``RetriableError`` if unknown.)"""
        response = self._request("GET", f"{GLOBAL_PATH}/{quote(email, safe='@')}")
        body = json_or_none(response)
        if not response.is_success or not isinstance(body, Mapping):
            raise RetriableError(f"{SYSTEM} read-back answered {error_reason(response)}")
        return str(body.get("recipient_email") or "").lower() == email.lower()

    def list_suppressed(self, page_size: int = 500) -> Iterator[str]:
        """Every globally suppressed address, page after page (``limit``/``offset``)."""
        offset = 0
        while True:
            response = self._request("GET", f"{LIST_PATH}?limit={page_size}&offset={offset}")
            page = listed_emails(response, SYSTEM)
            yield from page
            if len(page) < page_size:
                return
            offset += page_size

    # --- apply -------------------------------------------------------------------------
    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        return apply_by_address(commands, self._add_with_group, MAX_BATCH, self._remove)

    def _remove(self, address: str) -> Result:
        """Un-suppress: the global list, then the unsubscribe group."""
        email = quote(address, safe="@")
        paths = [f"{GLOBAL_PATH}/{email}"]
        if self.group_id is not None:
            paths.append(f"{GROUP_PATH.format(group_id=self.group_id)}/{email}")
        result: Result = (AckStatus.APPLIED, None)
        for path in paths:
            result = removal_result(self._request("DELETE", path, passthrough=frozenset({404})), SYSTEM)
            if result[0] is AckStatus.REJECTED:
                return result
        return result

    def _add_with_group(self, chunk: list[str], results: dict[str, Result]) -> None:
        """Global suppressions first; then the unsubscribe group, for the addresses added."""
        found: dict[str, Result] = {}
        self._add(GLOBAL_PATH, chunk, found)
        if self.group_id is not None:
            accepted = [e for e in chunk if found[e][0] is AckStatus.APPLIED]
            in_group: dict[str, Result] = {}
            self._add(GROUP_PATH.format(group_id=self.group_id), accepted, in_group)
            found.update(in_group)
        results.update(found)

    def _add(self, path: str, addresses: list[str], results: dict[str, Result]) -> None:
        def post(part: list[str]) -> httpx.Response:
            return self._request("POST", path, {"recipient_emails": part})

        add_addresses(addresses, post, listed, named_refusals, SYSTEM, results)


def build(destination: Destination, settings: Settings) -> SendGridConnector:
    """The connector of a ``sendgrid`` destination (options and ``api_key`` credential)."""
    options = parse_options(SendGridOptions, destination)
    return SendGridConnector(
        destination.id,
        require_credential(destination, "api_key"),
        make_client(options.timeout),
        base_url=options.base_url,
        group_id=options.group_id,
        credentials_check_seconds=settings.connector_credentials_check_seconds,
    )
