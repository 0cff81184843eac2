"""email_provider: add addresses to the email service provider's global unsubscribe list.

The call has the shape the real providers use (SendGrid's "add to global suppressions"):
``POST {base}/v3/asm/suppressions/global`` with ``{"recipient_emails": [...]}`` (at most
1,000), bearer token. It is idempotent: adding an address twice keeps one entry.

* 2xx: ``{"added": [...], "already_suppressed": [...]}`` -> APPLIED / ALREADY_SUPPRESSED.
  A 2xx whose body is not that shape (not JSON, neither list, wrong types) leaves the
  outcome unknown: those commands are REJECTED with that reason (never a false APPLIED,
  never a crash); an operator checks and re-sends.
* 400/422 naming addresses (``{"errors": [{"email", "message"}]}``): those addresses are
  REJECTED with the provider's message; the rest of the batch is sent again.
* any other permanent 4xx names no address: the batch is split in halves and each half
  sent again (a half accepted whole proves the refused address is in the other, which is
  then split without sending it), so one bad address among 1,000 costs ~log2(1000) more
  calls. Only an address refused when sent alone is REJECTED, with the provider's reason.
* 429 (Retry-After honoured), 5xx, timeouts: transient, retried by the kit; the outcomes
  found so far are kept (``IncompleteBatch``).
* 401/403: our token is refused: ``CredentialsRefused`` (partitions paused, checked again
  every ``connector_credentials_check_seconds``), never a rejection.
* 404: our URL is wrong: retried (and logged), never a rejection.

Opt-ins (``action: OPT_IN``): ``DELETE {base}/v3/asm/suppressions/global/{email}`` per
address, SendGrid's shape (https://www.twilio.com/docs/sendgrid/api-reference/suppressions-global-suppressions/delete-a-global-suppression):
204 -> APPLIED; 404 -> APPLIED with "was not on the provider's suppression list"; other
answers as above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr

from services.common.clock import Clock, SystemClock
from services.common.contract import AckStatus, Destination
from services.common.errors import RetriableError
from services.common.settings import Settings
from services.connectors.http import (
    DEFAULT_CREDENTIALS_CHECK_SECONDS,
    add_addresses,
    clean_reason,
    make_client,
    post_json,
    removal_result,
    retry_after_header,
    send,
    undocumented_answer,
)
from services.connectors.kinds import OPTIONS_CONFIG, parse_options
from services.connectors.kit import Command, Connector, IncompleteBatch, Outcome

ADD_PATH = "/v3/asm/suppressions/global"
MAX_BATCH = 1000
SYSTEM = "email provider"

Result = tuple[AckStatus, str | None]


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(e, str) for e in value)


def documented_success(body: Any) -> bool:
    """Is a 2xx body the documented ``{"added": [...], "already_suppressed": [...]}``
    (at least one of the two lists present, every present one a list of strings)?"""
    if not isinstance(body, Mapping):
        return False
    present = [body[k] for k in ("added", "already_suppressed") if k in body]
    return bool(present) and all(_string_list(v) for v in present)


def success_results(sent: Sequence[str], body: Any) -> dict[str, Result]:
    """Per-address result of a 2xx answer. Addresses the provider reports as already on
    the list are ALREADY_SUPPRESSED; every other address it accepted is APPLIED. An answer
    not in the documented shape rejects them all with that reason (the outcome is unknown)."""
    if not documented_success(body):
        reason = undocumented_answer(SYSTEM, "{added, already_suppressed}")
        return {e: (AckStatus.REJECTED, reason) for e in sent}
    already = {e.lower() for e in body.get("already_suppressed") or []}
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


# Un-suppresses one address (an opt-in); raises ``RetriableError`` when it may work later.
RemoveOne = Callable[[str], Result]
CANNOT_UNSUPPRESS = "this destination kind cannot un-suppress (opt-in); a person must act"


def outcomes_for(commands: Sequence[Command], results: Mapping[str, Result]) -> list[Outcome]:
    """One outcome per command whose address has a result (several commands may share one)."""
    return [
        Outcome(c.command_id, *results[c.email])
        for c in commands
        if c.email is not None and c.email in results
    ]


def apply_by_address(
    commands: Sequence[Command],
    add_chunk: Callable[[list[str], dict[str, Result]], None],
    max_batch: int,
    remove_one: RemoveOne | None = None,
) -> list[Outcome]:
    """What every email-provider kind's ``apply`` does: commands without an email are
    rejected, the distinct addresses of opt-outs are added ``max_batch`` at a time by
    ``add_chunk`` (which records a result per address), those of opt-ins (``OPT_IN``) are
    removed one by one by ``remove_one``, and each command gets its address's result. A
    transient failure keeps what is known (``IncompleteBatch``)."""
    outcomes = [
        Outcome.rejected(c.command_id, "command carries no email address") for c in commands if not c.email
    ]
    outs = [c for c in commands if c.email and not c.opt_in]
    ins = [c for c in commands if c.email and c.opt_in]
    if remove_one is None:
        outcomes += [Outcome.rejected(c.command_id, CANNOT_UNSUPPRESS) for c in ins]
        ins = []
    added: dict[str, Result] = {}
    removed: dict[str, Result] = {}

    def known() -> list[Outcome]:
        return [*outcomes, *outcomes_for(outs, added), *outcomes_for(ins, removed)]

    try:
        for chunk in chunks(list(dict.fromkeys(c.email for c in outs if c.email)), max_batch):
            add_chunk(chunk, added)
        if remove_one is not None:
            for address in dict.fromkeys(c.email for c in ins if c.email):
                removed[address] = remove_one(address)
    except RetriableError as exc:  # keep what is known; only the rest is tried again
        raise IncompleteBatch(known(), exc) from exc
    return known()


class EmailProviderConnector(Connector):
    destination = "email_provider"

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        client: httpx.Client,
        clock: Clock | None = None,
        credentials_check_seconds: float = DEFAULT_CREDENTIALS_CHECK_SECONDS,
        destination: str = "email_provider",
    ) -> None:
        self.destination = destination  # the destination's name in the destinations file
        self.url = base_url.rstrip("/") + ADD_PATH
        self._add_url = httpx.URL(self.url)  # parsed once, not on every call (issue #15)
        self.token = token
        self.client = client
        self.clock = clock or SystemClock()
        self.credentials_check_seconds = credentials_check_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailProviderConnector:
        return cls(
            settings.email_provider_url,
            settings.email_provider_token,
            make_client(settings.connector_http_timeout_seconds),
            credentials_check_seconds=settings.connector_credentials_check_seconds,
        )

    def close(self) -> None:
        self.client.close()

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        return apply_by_address(commands, self._add, MAX_BATCH, self._remove)

    def list_suppressed(self) -> Iterator[str]:
        """Every address on the list, for reconciliation: ``GET {base}/v3/asm/suppressions/global``
        -> 200 ``[{"email", "created"}]`` (the legacy provider's one unpaged list call, as its
        stand-in documents it; ``RetriableError`` when the answer is not that)."""
        now = self.clock.now()
        response = send(
            self.client,
            "GET",
            self.url,
            SYSTEM,
            lambda r: retry_after_header(r, now),
            self.credentials_check_seconds,
            headers={"Authorization": f"Bearer {self.token.get_secret_value()}"},
        )
        yield from listed_emails(response, SYSTEM)

    def _remove(self, address: str) -> Result:
        """``DELETE {url}/{email}`` -> 204 (the SendGrid shape this API follows); 404: it
        was not on the list."""
        now = self.clock.now()
        response = send(
            self.client,
            "DELETE",
            f"{self.url}/{quote(address, safe='@')}",
            SYSTEM,
            lambda r: retry_after_header(r, now),
            self.credentials_check_seconds,
            headers={"Authorization": f"Bearer {self.token.get_secret_value()}"},
            passthrough=frozenset({404}),
        )
        return removal_result(response, SYSTEM)

    def _add(self, addresses: list[str], results: dict[str, Result]) -> None:
        def post(part: list[str]) -> httpx.Response:
            return post_json(
                self.client,
                self._add_url,
                self.token,
                {"recipient_emails": part},
                self.clock.now(),
                SYSTEM,
                self.credentials_check_seconds,
            )

        add_addresses(addresses, post, success_results, rejected_addresses, SYSTEM, results)


def listed_emails(response: httpx.Response, system: str) -> list[str]:
    """The addresses of a 2xx ``[{"email": ..., "created": ...}, ...]`` list answer (SendGrid's
    list shape); ``RetriableError`` for anything else (the read-back is unknown, never empty)."""
    try:
        body = response.json() if response.is_success else None
    except ValueError:
        body = None
    if not isinstance(body, list):
        raise RetriableError(f"{system} list answer is not the documented [{{email, created}}]")
    return [
        item["email"] for item in body if isinstance(item, Mapping) and isinstance(item.get("email"), str)
    ]


# --- the kind (services/connectors/kinds.py) -------------------------------------------------
KIND = "email_provider"


class EmailProviderOptions(BaseModel):
    """``[settings]`` of an ``email_provider`` destination; unset: OPTOUT_EMAIL_PROVIDER_URL."""

    model_config = OPTIONS_CONFIG
    base_url: str | None = None


def build(destination: Destination, settings: Settings) -> Connector:
    """The connector of one ``email_provider`` destination. Its ``base_url`` setting and its
    ``token`` credential default to OPTOUT_EMAIL_PROVIDER_URL / _TOKEN (today's behaviour)."""
    options = parse_options(EmailProviderOptions, destination)
    token = destination.credentials.get("token") or settings.email_provider_token
    return EmailProviderConnector(
        options.base_url or settings.email_provider_url,
        token,
        make_client(settings.connector_http_timeout_seconds),
        credentials_check_seconds=settings.connector_credentials_check_seconds,
        destination=destination.id,
    )
