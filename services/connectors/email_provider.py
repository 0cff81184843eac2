"""email_provider: add addresses to the email service provider's global unsubscribe list.

The call has the shape the real providers use (SendGrid's "add to global suppressions"):
``POST {base}/v3/asm/suppressions/global`` with ``{"recipient_emails": [...]}`` (at most
1,000), bearer token. It is idempotent: adding an address twice keeps one entry.

* 2xx: ``{"added": [...], "already_suppressed": [...]}`` -> APPLIED / ALREADY_SUPPRESSED.
* 400/422 naming addresses (``{"errors": [{"email", "message"}]}``): those addresses are
  REJECTED with the provider's message; the rest of the batch is sent again.
* any other permanent 4xx: every address in that call is REJECTED with the reason.
* 429 (Retry-After honoured), 5xx, timeouts: transient, retried by the kit.
* 401/403/404: our token or URL is wrong: retried (and logged), never a rejection.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from services.common.clock import Clock, SystemClock
from services.common.contract import AckStatus
from services.common.errors import RetriableError
from services.common.settings import Settings
from services.connectors.http import clean_reason, error_reason, json_body, make_client, post_json
from services.connectors.kit import Command, Connector, IncompleteBatch, Outcome

ADD_PATH = "/v3/asm/suppressions/global"
MAX_BATCH = 1000
SYSTEM = "email provider"

Result = tuple[AckStatus, str | None]


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def success_results(sent: Sequence[str], body: Any) -> dict[str, Result]:
    """Per-address result of a 2xx answer. Addresses the provider reports as already on
    the list are ALREADY_SUPPRESSED; every other address it accepted is APPLIED."""
    already: set[str] = set()
    if isinstance(body, Mapping):
        listed = body.get("already_suppressed")
        if isinstance(listed, list):
            already = {str(e).lower() for e in listed}
    return {
        e: (AckStatus.ALREADY_SUPPRESSED, None) if e.lower() in already else (AckStatus.APPLIED, None)
        for e in sent
    }


def rejected_addresses(sent: Sequence[str], body: Any) -> dict[str, str]:
    """Addresses a 4xx answer names, with the provider's reason (made PII-free)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("errors"), list):
        return {}
    by_lower = {e.lower(): e for e in sent}
    found: dict[str, str] = {}
    for error in body["errors"]:
        if not isinstance(error, Mapping):
            continue
        address = by_lower.get(str(error.get("email") or "").lower())
        if address is not None:
            message = str(error.get("message") or "refused by the provider")
            found[address] = clean_reason(f"{SYSTEM}: {message}")
    return found


def outcomes_for(commands: Sequence[Command], results: Mapping[str, Result]) -> list[Outcome]:
    """One outcome per command whose address has a result (several commands may share one)."""
    return [
        Outcome(c.command_id, *results[c.email])
        for c in commands
        if c.email is not None and c.email in results
    ]


class EmailProviderConnector(Connector):
    destination = "email_provider"

    def __init__(
        self, base_url: str, token: SecretStr, client: httpx.Client, clock: Clock | None = None
    ) -> None:
        self.url = base_url.rstrip("/") + ADD_PATH
        self.token = token
        self.client = client
        self.clock = clock or SystemClock()

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailProviderConnector:
        return cls(
            settings.email_provider_url,
            settings.email_provider_token,
            make_client(settings.connector_http_timeout_seconds),
        )

    def close(self) -> None:
        self.client.close()

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        outcomes = [
            Outcome.rejected(c.command_id, "command carries no email address")
            for c in commands
            if not c.email
        ]
        addresses = list(dict.fromkeys(c.email for c in commands if c.email))
        results: dict[str, Result] = {}
        for chunk in chunks(addresses, MAX_BATCH):
            try:
                results.update(self._add(chunk))
            except RetriableError as exc:
                raise IncompleteBatch([*outcomes, *outcomes_for(commands, results)], exc) from exc
        return [*outcomes, *outcomes_for(commands, results)]

    def _add(self, addresses: list[str]) -> dict[str, Result]:
        """Add one call's worth of addresses; drop the ones the provider names as refused
        and send the rest again (each round removes at least one address)."""
        results: dict[str, Result] = {}
        remaining = addresses
        while remaining:
            response = post_json(
                self.client, self.url, self.token, {"recipient_emails": remaining}, self.clock.now(), SYSTEM
            )
            if response.is_success:
                results.update(success_results(remaining, json_body(response, SYSTEM)))
                return results
            refused = rejected_addresses(remaining, _json_or_none(response))
            if not refused:
                reason = clean_reason(f"{SYSTEM}: {error_reason(response)}")
                results.update({e: (AckStatus.REJECTED, reason) for e in remaining})
                return results
            results.update({e: (AckStatus.REJECTED, r) for e, r in refused.items()})
            remaining = [e for e in remaining if e not in refused]
        return results


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
