"""The sample verifying receiver for partners told over Standard Webhooks
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md),
and the stand-in partners ``optout run standins`` serves with it.

``WebhookReceiver.receive`` is what a partner's endpoint must do (``docs/destinations.md``
shows it):

1. verify ``webhook-signature`` over ``{webhook-id}.{webhook-timestamp}.{raw body}`` with
   each of the partner's current secrets (several during a rotation), in constant time;
   401 when none matches or a header is missing;
2. refuse (401) a ``webhook-timestamp`` more than 5 minutes from its clock (the spec's
   tolerance): a captured delivery cannot be replayed later;
3. never process a ``webhook-id`` twice: within the tolerance window a delivery whose id
   was already answered gets that first answer again, unprocessed (the sender retries an
   event under the same id, e.g. when the answer was lost); the same id with another
   body is refused (409). Ids older than twice the tolerance are forgotten: their
   timestamps can no longer pass step 2;
4. answer ``{"results": [{"reference", "status": "accepted" | "rejected", "reason"}]}``.

Events: ``suppression.created`` (``data.opt_outs``: hold these opt-outs) and, when a person
opts back in, ``suppression.deleted`` (``data.opt_ins``, the same items: drop every opt-out
held that shares a hash with one). The event types are ours (the specification leaves
``type`` to the sender); the envelope and signatures are the specification's.

``WebhookPartnersStandin`` routes ``POST /webhooks/<partner>`` to one receiver per partner
and adds the test knobs of ``partners_api``: 503 + ``Retry-After`` for a ``failure_rate``
share, a 400 naming no reference for hashes in ``refused_unnamed``, a rejection with a
reason for hashes in ``refused``, a ``garbage`` 2xx. ``GET /webhooks/<partner>`` returns
what the partner holds, the raw bodies and the answers by status. It serves plain http on
loopback for ``make run`` and the tests (``StandinServer`` can serve TLS for the https test).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common import standard_webhooks
from services.standins.web import Request, Response, error

MAX_BATCH = 1000
EVENT_TYPE = "suppression.created"
DELETED_EVENT_TYPE = "suppression.deleted"  # opting back in
_PATH = re.compile(r"^/webhooks/(?P<name>[a-z0-9_-]{1,64})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HASH_FIELD = re.compile(r"^(email|phone|customer_id|device_id)_(sha256|hmac_sha256)$")


def opt_outs_of(event: Any, event_type: str = EVENT_TYPE) -> list[dict[str, str]] | None:
    """The opt-outs of a ``suppression.created`` event (the opt-ins of a
    ``suppression.deleted`` one); None when it is not one."""
    if not isinstance(event, dict) or event.get("type") != event_type:
        return None
    data = event.get("data")
    key = "opt_ins" if event_type == DELETED_EVENT_TYPE else "opt_outs"
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) > MAX_BATCH:
        return None
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("reference"), str):
            return None
        hashes = {k: v for k, v in item.items() if k != "reference"}
        if not all(
            _HASH_FIELD.match(k) and isinstance(v, str) and _HEX64.match(v) for k, v in hashes.items()
        ):
            return None  # hashes only: anything else (a raw address, an unknown field) is refused
    return items


@dataclass
class _Seen:
    digest: str
    timestamp: int
    response: Response


@dataclass
class WebhookReceiver:
    """One partner's endpoint. ``secrets``: its current ``whsec_`` secrets."""

    secrets: Sequence[str]
    decide: Callable[[dict[str, str]], str | None] = lambda opt_out: None  # reason to reject, or None
    clock: Callable[[], float] = time.time
    tolerance_seconds: int = standard_webhooks.TOLERANCE_SECONDS
    held: dict[str, dict[str, str]] = field(default_factory=dict)  # reference -> opt-out
    opted_in: dict[str, dict[str, str]] = field(default_factory=dict)  # reference -> opt-in
    seen: dict[str, _Seen] = field(default_factory=dict)  # webhook-id -> first answer
    replays: int = 0

    def __post_init__(self) -> None:
        self.keys = [standard_webhooks.decode_secret(s) for s in self.secrets]

    def receive(self, headers: Mapping[str, str], body: bytes) -> Response:
        now = self.clock()
        try:  # 1 and 2: signature and timestamp
            msg_id, timestamp = standard_webhooks.verify(
                self.keys, headers, body, now, self.tolerance_seconds
            )
        except standard_webhooks.VerificationError as exc:
            return error(401, f"invalid webhook: {exc}")
        self._forget_before(now - 2 * self.tolerance_seconds)
        digest = hashlib.sha256(body).hexdigest()
        first = self.seen.get(msg_id)  # 3: the id is an idempotency key
        if first is not None:
            if first.digest != digest:
                return error(409, "webhook-id already used for another body")
            self.replays += 1
            return first.response
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        opt_outs = opt_outs_of(event)
        opt_ins = opt_outs_of(event, DELETED_EVENT_TYPE)
        if opt_outs is None and opt_ins is None:
            return error(400, f"body must be a {EVENT_TYPE} or {DELETED_EVENT_TYPE} event of hashes")
        results = []  # 4: one result per reference
        for opt_out in opt_outs if opt_outs is not None else opt_ins or []:
            reason = self.decide(opt_out)
            if reason is None and opt_ins is not None:
                hashes = {v for k, v in opt_out.items() if k != "reference"}
                for reference, held in list(self.held.items()):
                    if hashes & {v for k, v in held.items() if k != "reference"}:
                        del self.held[reference]
                self.opted_in[opt_out["reference"]] = opt_out
                results.append({"reference": opt_out["reference"], "status": "accepted", "reason": None})
            elif reason is None:
                self.held[opt_out["reference"]] = opt_out
                results.append({"reference": opt_out["reference"], "status": "accepted", "reason": None})
            else:
                results.append({"reference": opt_out["reference"], "status": "rejected", "reason": reason})
        response = Response(200, {"results": results})
        self.seen[msg_id] = _Seen(digest, timestamp, response)
        return response

    def _forget_before(self, oldest: float) -> None:
        for msg_id in [m for m, s in self.seen.items() if s.timestamp < oldest]:
            del self.seen[msg_id]


@dataclass
class _Partner:
    receiver: WebhookReceiver
    raw_bodies: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)


class WebhookPartnersStandin:
    """Several partners' webhook endpoints, each a ``WebhookReceiver``."""

    def __init__(
        self,
        secrets: Mapping[str, Sequence[str]],
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        refused: Mapping[str, str] | None = None,
        refused_unnamed: Mapping[str, str] | None = None,
        garbage: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.refused = dict(refused or {})
        self.refused_unnamed = dict(refused_unnamed or {})
        self.failure_rate = failure_rate
        self.garbage = garbage
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.partners = {
            name: _Partner(WebhookReceiver(list(keys), decide=self._decide, clock=clock))
            for name, keys in secrets.items()
        }

    def _decide(self, opt_out: dict[str, str]) -> str | None:
        return next(
            (self.refused[v] for k, v in opt_out.items() if k != "reference" and v in self.refused), None
        )

    def handle(self, request: Request) -> Response:
        match = _PATH.match(request.path)
        partner = self.partners.get(match["name"]) if match else None
        if partner is None:
            return error(404, "no such partner")
        with self._lock:
            if request.method == "GET":
                return Response(
                    200,
                    {
                        "opt_outs": list(partner.receiver.held.values()),
                        "opt_ins": list(partner.receiver.opted_in.values()),
                        "raw_bodies": list(partner.raw_bodies),
                        "answers": {str(k): v for k, v in partner.answers.items()},
                        "replays": partner.receiver.replays,
                    },
                )
            if request.method != "POST":
                return error(405, "method not allowed")
            response = self._post(partner, request)
            partner.answers[response.status] += 1
            return response

    def _post(self, partner: _Partner, request: Request) -> Response:
        partner.raw_bodies.append(request.body.decode("utf-8", "replace"))
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return Response(503, {"error": "partner temporarily unavailable"}, {"Retry-After": "1"})
        receiver = partner.receiver
        try:  # the knobs below answer authentic deliveries only (receive() checks again)
            standard_webhooks.verify(receiver.keys, request.headers, request.body, receiver.clock())
        except standard_webhooks.VerificationError as exc:
            return error(401, f"invalid webhook: {exc}")
        if self.refused_unnamed:
            hit = [reason for h, reason in self.refused_unnamed.items() if h.encode() in request.body]
            if hit:
                return error(400, hit[0])
        if self.garbage is not None:
            return Response(200, self.garbage)
        return receiver.receive(request.headers, request.body)
