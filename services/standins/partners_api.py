"""Stand-in of third-party partners' "do not sell/share" endpoints, one per partner name.

``POST /partners/<name>/opt-outs`` ``{"opt_outs": [{"reference", "email_sha256",
"phone_sha256", "customer_id_sha256", "device_id_sha256"}]}`` with ``Authorization: Bearer <partner token>``:

* 404 unknown partner; 401 wrong token;
* 503 (+ ``Retry-After: 1``) for a random ``failure_rate`` share of requests;
* 400 ``raw_identifier`` when anything in the body looks like a raw email address or
  phone number, or a hash field is not 64 lower-case hex digits: partners accept hashes
  only, and refuse the whole request;
* 400 malformed body, unknown fields, or more than 1,000 opt-outs;
* 400 ``{"error": reason}`` naming no reference when an opt-out carries a hash of
  ``refused_unnamed`` (``{hash: reason}``): the whole request is refused, the caller
  must find the item itself;
* a 200 whose body is ``garbage`` (when set: bytes, or any JSON value) instead of the
  documented answer, to test what the connector does with a partner's bad data;
* 200 ``{"accepted": [...], "rejected": [{"reference", "reason"}]}``; an opt-out with no
  hash at all is rejected; a reference seen before is accepted again (idempotent).

``POST /partners/<name>/opt-ins`` ``{"opt_ins": [...]}`` (the same items, checks and answers):
the person opted back in; the partner drops every opt-out it holds that shares a hash with
the item (this partner API is our own; there is no published standard to follow).

``GET /partners/<name>/opt-outs`` returns what the partner holds and every raw body it
was sent (``{"opt_outs", "raw_bodies", "answers"}``), so tests can check that nothing
but hashes ever left. State is in memory.
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.standins.web import Request, Response, error

MAX_BATCH = 1000
HASH_FIELDS = frozenset({"email_sha256", "phone_sha256", "customer_id_sha256", "device_id_sha256"})
ALLOWED_FIELDS = HASH_FIELDS | {"reference"}
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_PATH = re.compile(r"^/partners/(?P<name>[a-z0-9_-]{1,64})/(?P<what>opt-outs|opt-ins)$")
_RAW_PHONE = re.compile(r"\+\d{7,15}")


def looks_raw(text: str) -> bool:
    """Does this text contain something like a raw email address or E.164 phone number?"""
    return "@" in text or _RAW_PHONE.search(text) is not None


def validate_opt_outs(body: Any, key: str = "opt_outs") -> tuple[list[dict[str, str]], str | None]:
    """``(opt-outs, None)``, or ``([], reason)`` when the whole request must be refused
    (``key``: ``opt_outs``, or ``opt_ins`` for opting back in)."""
    if not isinstance(body, dict) or set(body) != {key} or not isinstance(body[key], list):
        return [], f'body must be {{"{key}": [...]}}'
    items = body[key]
    if len(items) > MAX_BATCH:
        return [], f"at most {MAX_BATCH} {key} per request"
    checked: list[dict[str, str]] = []
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
            return [], "each opt-out must be an object of strings"
        unknown = set(item) - ALLOWED_FIELDS
        if unknown:
            return [], f"unknown fields: {', '.join(sorted(unknown))}"
        if not item.get("reference"):
            return [], "each opt-out needs a reference"
        if any(not _SHA256_HEX.match(item[k]) for k in HASH_FIELDS & set(item)):
            return [], "hash fields must be lower-case hex SHA-256"
        checked.append(item)
    return checked, None


@dataclass
class Partner:
    token: str
    opt_outs: dict[str, dict[str, str]] = field(default_factory=dict)  # reference -> opt-out
    opt_ins: dict[str, dict[str, str]] = field(default_factory=dict)  # reference -> opt-in
    raw_bodies: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)


class PartnersStandin:
    def __init__(
        self,
        tokens: Mapping[str, str],
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        refused_unnamed: Mapping[str, str] | None = None,
        garbage: Any = None,
    ) -> None:
        self.partners = {name: Partner(token) for name, token in tokens.items()}
        self.failure_rate = failure_rate
        self.refused_unnamed = dict(refused_unnamed or {})
        self.garbage = garbage
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

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
                        "opt_outs": list(partner.opt_outs.values()),
                        "opt_ins": list(partner.opt_ins.values()),
                        "raw_bodies": list(partner.raw_bodies),
                        "answers": {str(k): v for k, v in partner.answers.items()},
                    },
                )
            if request.method != "POST":
                return error(405, "method not allowed")
            response = self._receive(
                partner, request, opting_in=match is not None and match["what"] == "opt-ins"
            )
            partner.answers[response.status] += 1
            return response

    def _receive(self, partner: Partner, request: Request, opting_in: bool = False) -> Response:
        if request.bearer_token() != partner.token:
            return error(401, "authorization required")
        raw = request.body.decode("utf-8", "replace")
        partner.raw_bodies.append(raw)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return Response(503, {"error": "partner temporarily unavailable"}, {"Retry-After": "1"})
        if looks_raw(raw):
            return error(
                400, "raw identifiers are not accepted; send SHA-256 hashes", reason="raw_identifier"
            )
        try:
            body = request.json()
        except ValueError:
            return error(400, "body is not JSON")
        items, problem = validate_opt_outs(body, "opt_ins" if opting_in else "opt_outs")
        if problem is not None:
            return error(400, problem)
        for item in items:
            hit = [
                self.refused_unnamed[h]
                for k, h in item.items()
                if k != "reference" and h in self.refused_unnamed
            ]
            if hit:
                return error(400, hit[0])
        if self.garbage is not None:
            return Response(200, self.garbage)
        accepted, rejected = [], []
        for item in items:
            if not HASH_FIELDS & set(item):
                rejected.append({"reference": item["reference"], "reason": "no identifier hash"})
                continue
            if opting_in:
                hashes = {h for k, h in item.items() if k != "reference"}
                for reference, held in list(partner.opt_outs.items()):
                    if hashes & {h for k, h in held.items() if k != "reference"}:
                        del partner.opt_outs[reference]
                partner.opt_ins[item["reference"]] = item
            else:
                partner.opt_outs[item["reference"]] = item
            accepted.append(item["reference"])
        return Response(200, {"accepted": accepted, "rejected": rejected})
