"""third_party_sharing: tell every configured partner not to receive or sell this person's
data, using only SHA-256 hashes of normalized identifiers.

Each partner gets ``POST {partner.url}/opt-outs`` (bearer token) with
``{"opt_outs": [{"reference", "email_sha256", "phone_sha256", "customer_id_sha256",
"device_id_sha256"}]}`` (at most 1,000 per call). ``reference`` is the command id: partners key opt-outs by
it, so sending one again is harmless. Nothing else leaves: the email and phone hashes
come from intake (hashes of the normalized values; the commands of this destination
carry no raw email or phone) and the customer id is hashed here, as is a device id (the
pseudonymous first-party id of a browser that sent Global Privacy Control: random, so it
names no one, but a partner still gets only its SHA-256, like every other identifier).

A command is APPLIED once every partner accepted it; REJECTED, naming the partners and
their reasons, if any partner refused it permanently. A transient failure at any
partner retries the batch (partners that already accepted see the same references).
The partners are called at the same time (``PartnerCalls``: one thread per partner), so a
batch takes as long as the slowest partner, not the sum of them; the batch's outcome waits
for every partner, and a failure raises the first partner's error in the configured order,
as calling them in turn would.

A partner's 2xx names refused references in ``rejected``; a permanent 4xx names none, so
the call is split in halves and sent again (a half accepted whole proves the refusal is
in the other half, which is split without being sent): one refused opt-out among 1,000
costs ~log2(1000) more calls, and only an opt-out refused when sent alone is refused,
with the partner's reason. A 2xx that is not the documented ``{"accepted": [...],
"rejected": [{"reference", "reason"}]}`` (not JSON, wrong types) refuses that call's
opt-outs with that reason: the outcome is unknown, so never APPLIED, and never a crash.

Opting back in (``action: OPT_IN``): ``POST {partner.url}/opt-ins`` with
``{"opt_ins": [...]}``, the same records and answers; the partner drops the opt-outs it holds
for those hashes (the stand-in, ``services/standins/partners_api.py``, documents it).

``OPTOUT_PARTNERS=[]`` is refused at start-up: nobody would be told.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from services.common.clock import Clock, SystemClock
from services.common.contract import Destination
from services.common.errors import ConfigurationError
from services.common.logging import get_logger
from services.common.settings import PartnerEndpoint, Settings
from services.connectors.http import (
    CallAnswer,
    RefusedWhole,
    clean_reason,
    error_reason,
    find_refusals,
    json_or_none,
    make_client,
    post_json,
    undocumented_answer,
)
from services.connectors.kinds import OPTIONS_CONFIG, parse_options, require_hashes_only
from services.connectors.kit import Command, Connector, Outcome
from services.domain.identity import sha256_hex

log = get_logger(__name__)

MAX_BATCH = 1000
OPT_OUTS_PATH = "/opt-outs"
OPT_INS_PATH = "/opt-ins"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
HASH_FIELDS = ("email_sha256", "phone_sha256", "customer_id_sha256", "device_id_sha256")


def is_sha256_hex(value: str | None) -> bool:
    return value is not None and _SHA256_HEX.match(value) is not None


def partner_record(command: Command) -> dict[str, str] | None:
    """What partners learn about one command: its reference and hashes, nothing else.
    None when the command has no usable identifier."""
    record: dict[str, str] = {}
    if is_sha256_hex(command.email_sha256) and command.email_sha256:
        record["email_sha256"] = command.email_sha256
    if is_sha256_hex(command.phone_sha256) and command.phone_sha256:
        record["phone_sha256"] = command.phone_sha256
    if command.customer_id:
        record["customer_id_sha256"] = sha256_hex(command.customer_id)
    if command.device_id:
        record["device_id_sha256"] = sha256_hex(command.device_id)
    if not record:
        return None
    return {"reference": command.command_id, **record}


def partner_refusals(partner: str, sent: Sequence[str], body: Any) -> dict[str, str] | None:
    """References a partner's 2xx answer lists under ``rejected``, with its reasons; None
    when the answer is not the documented shape (then nothing about the call is known)."""
    if not isinstance(body, Mapping):
        return None
    accepted, rejected = body.get("accepted", []), body.get("rejected", [])
    if ("accepted" not in body and "rejected" not in body) or not isinstance(accepted, list):
        return None
    if not isinstance(rejected, list) or not all(
        isinstance(item, Mapping) and isinstance(item.get("reference"), str) for item in rejected
    ):
        return None
    wanted = set(sent)
    found: dict[str, str] = {}
    for item in rejected:
        if item["reference"] in wanted:
            found[item["reference"]] = clean_reason(f"{partner}: {item.get('reason') or 'refused'}")
    return found


def combine(command_ids: Sequence[str], refusals: Mapping[str, list[str]]) -> list[Outcome]:
    """APPLIED when no partner refused; otherwise REJECTED with every partner's reason."""
    return [
        Outcome.rejected(cid, clean_reason("; ".join(refusals[cid]), 500))
        if refusals.get(cid)
        else Outcome.applied(cid)
        for cid in command_ids
    ]


def _chunks(records: Sequence[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    for start in range(0, len(records), size):
        yield list(records[start : start + size])


P = TypeVar("P")
R = TypeVar("R")


class PartnerCalls:
    """Runs one call per partner at the same time (the caller's thread and one pool thread per
    further partner; the HTTP client's connection pool is shared and thread-safe) and returns
    their results in partner order.
    Every call finishes before ``each`` returns or raises; when some raised, the error of the
    first of them in partner order is raised (what calling them in turn would have raised;
    the partners that did accept see the same references again on the retry, harmlessly:
    they key opt-outs by reference). Each call runs in a copy of the caller's context, so
    its log lines keep the service's bound fields."""

    def __init__(self, partners: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(max(1, partners - 1), thread_name_prefix=f"partners-{name}")

    def each(self, partners: Sequence[P], call: Callable[[P], R]) -> list[R]:
        if len(partners) == 1:
            return [call(partners[0])]
        # The first partner is called on the caller's own thread while the pool calls the others
        # (one thread hand-off fewer per batch, issue #15); all finish before this returns.
        futures: list[Future[R]] = [
            self._pool.submit(contextvars.copy_context().run, call, partner) for partner in partners[1:]
        ]
        try:
            first = contextvars.copy_context().run(call, partners[0])
        except Exception:
            wait_all(futures)
            raise
        wait_all(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return [first, *(future.result() for future in futures)]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class ThirdPartySharingConnector(Connector):
    destination = "third_party_sharing"

    def __init__(
        self,
        partners: Sequence[PartnerEndpoint],
        client: httpx.Client,
        clock: Clock | None = None,
        destination: str = "third_party_sharing",
    ) -> None:
        self.destination = destination  # the destination's name in the destinations file
        if not partners:
            # Nobody would be told, yet every command would be acknowledged APPLIED.
            raise ConfigurationError(
                "OPTOUT_PARTNERS is empty: the third_party_sharing connector would acknowledge "
                "opt-outs without telling anyone; list the partners, or do not run this connector"
            )
        self.partners = list(partners)
        self.client = client
        # Each partner's two URLs, parsed once, not on every call (issue #15).
        self._urls = {
            (p.url, opting_in): httpx.URL(p.url.rstrip("/") + (OPT_INS_PATH if opting_in else OPT_OUTS_PATH))
            for p in self.partners
            for opting_in in (False, True)
        }
        self.clock = clock or SystemClock()
        self.calls = PartnerCalls(len(self.partners), destination)

    @classmethod
    def from_settings(cls, settings: Settings) -> ThirdPartySharingConnector:
        return cls(settings.partners, make_client(settings.connector_http_timeout_seconds))

    def close(self) -> None:
        try:
            self.calls.close()
        finally:
            self.client.close()

    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        outs: list[dict[str, str]] = []
        ins: list[dict[str, str]] = []
        for command in commands:
            record = partner_record(command)
            if record is None:
                outcomes.append(
                    Outcome.rejected(command.command_id, "command carries no customer id or identifier hash")
                )
            else:
                (ins if command.opt_in else outs).append(record)

        def tell(partner: PartnerEndpoint) -> dict[str, str]:
            """One partner's refusals of the whole batch (its calls in turn)."""
            found: dict[str, str] = {}
            for records, opting_in in ((outs, False), (ins, True)):
                for chunk in _chunks(records, MAX_BATCH):
                    found.update(self._send(partner, chunk, opting_in))
            return found

        refusals: dict[str, list[str]] = {}
        for found in self.calls.each(self.partners, tell):  # every partner at once
            for reference, reason in found.items():
                refusals.setdefault(reference, []).append(reason)
        outcomes.extend(combine([r["reference"] for r in (*outs, *ins)], refusals))
        return outcomes

    def _send(
        self, partner: PartnerEndpoint, records: list[dict[str, str]], opting_in: bool = False
    ) -> dict[str, str]:
        """Send one chunk to a partner: its refusals by reference (a 4xx naming no
        reference is narrowed down by ``find_refusals``); raises ``RetriableError`` when
        the partner may accept later."""
        system = f"partner {partner.name}"

        def call(part: list[dict[str, str]]) -> CallAnswer:
            response = post_json(
                self.client,
                self._urls[(partner.url, opting_in)],
                partner.token,
                {"opt_ins": part} if opting_in else {"opt_outs": part},
                self.clock.now(),
                system,
            )
            references = [r["reference"] for r in part]
            if not response.is_success:
                return RefusedWhole(clean_reason(f"{partner.name}: {error_reason(response)}"))
            found = partner_refusals(partner.name, references, json_or_none(response))
            if found is None:
                return dict.fromkeys(references, undocumented_answer(partner.name, "{accepted, rejected}"))
            return found

        return find_refusals(records, lambda r: r["reference"], call)


# --- the kind (services/connectors/kinds.py) -------------------------------------------------
KIND = "partners"


class PartnersOptions(BaseModel):
    """``[settings]`` of a ``partners`` destination: none yet; the partners are OPTOUT_PARTNERS."""

    model_config = OPTIONS_CONFIG


def build(destination: Destination, settings: Settings) -> Connector:
    """The connector of one ``partners`` destination (today's invented partner API)."""
    parse_options(PartnersOptions, destination)
    require_hashes_only(destination)  # third parties never see a raw email or phone
    return ThirdPartySharingConnector(
        settings.partners, make_client(settings.connector_http_timeout_seconds), destination=destination.id
    )
