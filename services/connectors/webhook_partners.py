"""webhook_partners: tell third parties of opt-outs by HTTPS POST signed per the Standard
Webhooks specification
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md,
https://www.standardwebhooks.com/). Only hashes leave.

One destination of this kind lists its partners in its options; each partner gets, per
batch of at most ``max_batch`` (default 500, at most 1,000) opt-outs::

    POST {partner.url}
    content-type: application/json
    webhook-id: msg_<32 hex>          # digest of the body: the same on every retry of it
    webhook-timestamp: 1764569412     # Unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> [v1,... per secret]

    {"type": "suppression.created", "timestamp": "2026-12-01T06:10:12.345000Z",
     "data": {"opt_outs": [{"reference": "<command id>", "email_sha256": "<64 hex>",
                            "phone_sha256": "<64 hex>", "customer_id_sha256": "<64 hex>"}]}}

When people opt back in (``action: OPT_IN``) the event is ``suppression.deleted`` with
``data.opt_ins`` (the same items): the partner drops what it holds for those hashes. The
event types are ours; the specification leaves ``type`` to the sender.

``timestamp`` is when the newest of these opt-outs was ordered. Hash formats, per partner:

* ``sha256`` (default): SHA-256 hex of the normalized identifier (email trimmed and
  lower-cased, phone in E.164, customer id and device id as they are): fields
  ``email_sha256``, ``phone_sha256``, ``customer_id_sha256``, ``device_id_sha256``.
* ``hmac_sha256``: HMAC-SHA256 hex, keyed with the partner's ``hash_key`` credential, of
  that SHA-256 hex (a partner that does not want plain hashes anyone can recompute):
  fields ``email_hmac_sha256``, ``phone_hmac_sha256``, ``customer_id_hmac_sha256``.

Both are computed from intake's hashes: the commands of this destination carry no raw email
or phone. The partner answers 2xx ``{"results": [{"reference", "status": "accepted" |
"rejected", "reason"}]}``. A command is APPLIED once every partner accepted it; REJECTED
with the partners' reasons when one refused it. A 2xx of another shape, or one naming no
result for a reference, refuses those opt-outs with that reason (outcome unknown: never
APPLIED, never a crash). The partners are called at the same time
(``third_party_sharing.PartnerCalls``); a batch's outcome waits for all of them.
Unreachable, timeouts, 408/425/429/5xx (Retry-After honoured): the batch is retried
(``RetriableError``). 401/403: the partner refuses our signature, our misconfiguration:
``CredentialsRefused``. 404/405/410: a wrong URL, retried with an error log (an operator
must act). Another 4xx names no reference: the call is split in halves
to find the refused opt-outs (``services.connectors.http.find_refusals``).

Signing secrets (``whsec_<base64>``) come from credentials; a credential may hold several
whitespace-separated secrets, and each delivery is signed with every one (rotation: old
and new are valid at once). Partner URLs must be ``https://`` (certificates verified,
``ca_bundle`` for a private CA); plain ``http://`` only on a loopback host (the local
stand-in).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, field_validator, model_validator

from services.common import standard_webhooks
from services.common.clock import Clock, SystemClock
from services.common.contract import Destination
from services.common.errors import ConfigurationError, RetriableError
from services.common.logging import get_logger
from services.common.settings import Settings
from services.connectors.http import (
    CallAnswer,
    RefusedWhole,
    Verdict,
    classify_status,
    clean_reason,
    error_reason,
    find_refusals,
    json_or_none,
    make_client,
    parse_retry_after,
    undocumented_answer,
)
from services.connectors.kinds import OPTIONS_CONFIG, parse_options, require_credential, require_hashes_only
from services.connectors.kit import Command, Connector, CredentialsRefused, Outcome
from services.connectors.third_party_sharing import PartnerCalls, combine, partner_record

log = get_logger(__name__)

KIND = "webhook_partners"
EVENT_TYPE = "suppression.created"
DELETED_EVENT_TYPE = "suppression.deleted"  # opting back in
MAX_BATCH = 1000
DEFAULT_BATCH = 500  # ~190 bytes per opt-out: ~95 kB per delivery
HASHED_FIELDS = ("email", "phone", "customer_id", "device_id")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_GONE = 410  # the spec: the receiver no longer wants these webhooks (an operator must act)
MIN_HASH_KEY_BYTES = 16


class HashFormat(StrEnum):
    SHA256 = "sha256"
    HMAC_SHA256 = "hmac_sha256"


class PartnerOptions(BaseModel):
    """One partner in the destination's ``settings.partners`` list."""

    model_config = OPTIONS_CONFIG
    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str
    hash_format: HashFormat = HashFormat.SHA256
    # Credential names holding its signing secrets; default "<name>_signing_secret".
    secret_credentials: tuple[str, ...] = ()
    # Credential name of the HMAC key for hash_format hmac_sha256; default "<name>_hash_key".
    hash_key_credential: str | None = None

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError("must be an absolute https:// URL")
        if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
            return url
        raise ValueError("must be https:// (plain http:// only on a loopback host)")

    def secret_names(self) -> tuple[str, ...]:
        return self.secret_credentials or (f"{self.name}_signing_secret",)

    def hash_key_name(self) -> str:
        return self.hash_key_credential or f"{self.name}_hash_key"


class WebhookPartnersOptions(BaseModel):
    model_config = OPTIONS_CONFIG
    partners: tuple[PartnerOptions, ...] = Field(min_length=1)
    max_batch: int = Field(DEFAULT_BATCH, ge=1, le=MAX_BATCH)
    timeout_seconds: float | None = Field(None, gt=0, le=120)  # default: connector_http_timeout_seconds
    ca_bundle: str | None = None  # PEM file of a private CA; default: the system's CAs
    credentials_recheck_seconds: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> WebhookPartnersOptions:
        names = [p.name for p in self.partners]
        if len(set(names)) != len(names):
            raise ValueError("partner names must be unique")
        return self


@dataclass(frozen=True)
class Partner:
    name: str
    url: str
    hash_format: HashFormat
    keys: tuple[bytes, ...]  # signing keys, every one used
    hash_key: bytes | None = None  # for HashFormat.HMAC_SHA256


# --- pure helpers ----------------------------------------------------------------------------
def partner_opt_out(record: Mapping[str, str], partner: Partner) -> dict[str, str]:
    """A ``partner_record`` (reference + SHA-256 hashes) in the partner's hash format."""
    if partner.hash_format is HashFormat.SHA256:
        return dict(record)
    assert partner.hash_key is not None  # checked when the partner was built
    out = {"reference": record["reference"]}
    for field in HASHED_FIELDS:
        digest = record.get(f"{field}_sha256")
        if digest is not None:
            out[f"{field}_hmac_sha256"] = hmac.new(
                partner.hash_key, digest.encode(), hashlib.sha256
            ).hexdigest()
    return out


def event_body(
    opt_outs: Sequence[Mapping[str, str]], occurred_at: datetime, opting_in: bool = False
) -> bytes:
    """The signed body: minified JSON, built once and sent byte for byte (``opting_in``: a
    ``suppression.deleted`` event of ``opt_ins``)."""
    stamp = occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = {"opt_ins" if opting_in else "opt_outs": list(opt_outs)}
    event = {"type": DELETED_EVENT_TYPE if opting_in else EVENT_TYPE, "timestamp": stamp, "data": data}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode()


def webhook_id(body: bytes) -> str:
    """The same body has the same id on every attempt (the spec's idempotency key)."""
    return "msg_" + hashlib.sha256(body).hexdigest()[:32]


_STATUSES = frozenset({"accepted", "rejected"})


def partner_results(partner: str, sent: Sequence[str], body: Any) -> dict[str, str] | None:
    """Refusals by reference in a partner's 2xx ``{"results": [...]}``; None when the answer
    is not that shape. A sent reference without a result is refused (outcome unknown)."""
    results = body.get("results") if isinstance(body, Mapping) else None
    if not isinstance(results, list) or not all(
        isinstance(item, Mapping)
        and isinstance(item.get("reference"), str)
        and item.get("status") in _STATUSES
        and isinstance(item.get("reason"), str | None)
        for item in results
    ):
        return None
    wanted = set(sent)
    answered: set[str] = set()
    refusals: dict[str, str] = {}
    for item in results:
        reference = item["reference"]
        if reference not in wanted:
            continue
        answered.add(reference)
        if item["status"] == "rejected":
            refusals[reference] = clean_reason(f"{partner}: {item.get('reason') or 'rejected'}")
    for reference in wanted - answered:
        refusals[reference] = clean_reason(
            f"{partner}: answer names no result for this opt-out; outcome unknown"
        )
    return refusals


def _chunks(items: Sequence[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# --- the connector ---------------------------------------------------------------------------
class WebhookPartnersConnector(Connector):
    def __init__(
        self,
        destination: str,
        partners: Sequence[Partner],
        client: httpx.Client,
        max_batch: int = DEFAULT_BATCH,
        credentials_recheck_seconds: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        if not partners:
            raise ConfigurationError(f"destination {destination!r} ({KIND}) lists no partners")
        self.destination = destination
        self.partners = list(partners)
        self.client = client
        self.max_batch = max_batch
        self.credentials_recheck_seconds = credentials_recheck_seconds
        self.clock = clock or SystemClock()
        self.calls = PartnerCalls(len(self.partners), destination)

    def close(self) -> None:
        try:
            self.calls.close()
        finally:
            self.client.close()

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        outs: list[dict[str, str]] = []
        ins: list[dict[str, str]] = []
        ordered: dict[str, datetime] = {}
        for command in commands:
            record = partner_record(command)
            if record is None:
                outcomes.append(
                    Outcome.rejected(command.command_id, "command carries no customer id or identifier hash")
                )
                continue
            (ins if command.opt_in else outs).append(record)
            ordered[command.command_id] = command.issued_at

        def tell(partner: Partner) -> dict[str, str]:
            """One partner's refusals of the whole batch (its deliveries in turn)."""
            found: dict[str, str] = {}
            for records, opting_in in ((outs, False), (ins, True)):
                for chunk in _chunks(records, self.max_batch):
                    opt_outs = [partner_opt_out(r, partner) for r in chunk]
                    call = partial(self._call, partner, ordered, opting_in)
                    found.update(find_refusals(opt_outs, _reference, call))
            return found

        refusals: dict[str, list[str]] = {}
        for found in self.calls.each(self.partners, tell):  # every partner at once
            for reference, reason in found.items():
                refusals.setdefault(reference, []).append(reason)
        outcomes.extend(combine([r["reference"] for r in (*outs, *ins)], refusals))
        return outcomes

    def _call(
        self,
        partner: Partner,
        ordered: Mapping[str, datetime],
        opting_in: bool,
        opt_outs: list[dict[str, str]],
    ) -> CallAnswer:
        references = [o["reference"] for o in opt_outs]
        body = event_body(opt_outs, max(ordered[r] for r in references), opting_in)
        response = self._post(partner, body)
        if not response.is_success:
            return RefusedWhole(clean_reason(f"{partner.name}: {error_reason(response)}"))
        found = partner_results(partner.name, references, json_or_none(response))
        if found is None:
            return dict.fromkeys(references, undocumented_answer(partner.name, "{results: [...]}"))
        return found

    def _post(self, partner: Partner, body: bytes) -> httpx.Response:
        """POST the signed body; a 2xx or a permanent 4xx comes back, the rest raises."""
        now = self.clock.now()
        system = f"partner {partner.name}"
        headers = standard_webhooks.signed_headers(partner.keys, webhook_id(body), int(now.timestamp()), body)
        try:
            response = self.client.post(
                partner.url, content=body, headers={**headers, "Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:  # unreachable, timeout, TLS failure
            raise RetriableError(f"{system} unreachable ({type(exc).__name__})") from exc
        except httpx.RequestError as exc:
            raise RetriableError(
                f"{system} sent an answer that could not be read ({type(exc).__name__})"
            ) from exc
        code = response.status_code
        if code in (401, 403):
            # The kit pauses the connector and says so once (a log line, a gauge, an alert).
            raise CredentialsRefused(
                f"{system} answered HTTP {code}: check its signing secrets, and this host's clock "
                "(partners refuse timestamps more than 5 minutes off)",
                retry_after=self.credentials_recheck_seconds,
            )
        verdict = classify_status(code)
        if verdict is Verdict.TRANSIENT:
            raise RetriableError(
                f"{system} answered HTTP {code}",
                retry_after=parse_retry_after(response.headers.get("Retry-After"), now),
            )
        if verdict is Verdict.CONFIGURATION or code == _GONE:
            log.error(
                "partner endpoint refused the URL; check the destination's settings",
                system=system,
                status=code,
            )
            raise RetriableError(f"{system} answered HTTP {code}: check its URL")
        return response


def _reference(opt_out: Mapping[str, str]) -> str:
    return opt_out["reference"]


# --- building it from a destination ----------------------------------------------------------
def _keys(destination: Destination, credential: str) -> list[bytes]:
    secrets = require_credential(destination, credential).get_secret_value().split()
    keys: list[bytes] = []
    for secret in secrets:
        try:
            keys.append(standard_webhooks.decode_secret(secret))
        except ValueError as exc:
            raise ConfigurationError(
                f"destination {destination.id!r} ({KIND}): credential {credential!r}: {exc}"
            ) from None
    return keys


def partner_from(destination: Destination, options: PartnerOptions) -> Partner:
    keys = [key for name in options.secret_names() for key in _keys(destination, name)]
    hash_key: bytes | None = None
    if options.hash_format is HashFormat.HMAC_SHA256:
        name = options.hash_key_name()
        hash_key = require_credential(destination, name).get_secret_value().encode()
        if len(hash_key) < MIN_HASH_KEY_BYTES:
            raise ConfigurationError(
                f"destination {destination.id!r} ({KIND}): credential {name!r} must hold "
                f"at least {MIN_HASH_KEY_BYTES} bytes"
            )
    return Partner(options.name, options.url, options.hash_format, tuple(keys), hash_key)


def tls_verification(destination: Destination, ca_bundle: str | None) -> ssl.SSLContext | bool:
    """True (the system's CAs), or a context trusting ``ca_bundle``; never verification off."""
    if ca_bundle is None:
        return True
    if not Path(ca_bundle).is_file():
        raise ConfigurationError(
            f"destination {destination.id!r} ({KIND}): settings.ca_bundle: no file {ca_bundle}"
        )
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"destination {destination.id!r} ({KIND}): settings.ca_bundle: not a PEM CA bundle ({exc})"
        ) from None


def build(destination: Destination, settings: Settings) -> WebhookPartnersConnector:
    options = parse_options(WebhookPartnersOptions, destination)
    require_hashes_only(destination)  # partners never see a raw email or phone
    partners = [partner_from(destination, p) for p in options.partners]
    timeout = options.timeout_seconds or settings.connector_http_timeout_seconds
    client = make_client(timeout, verify=tls_verification(destination, options.ca_bundle))
    return WebhookPartnersConnector(
        destination.id,
        partners,
        client,
        max_batch=options.max_batch,
        credentials_recheck_seconds=options.credentials_recheck_seconds,
    )
