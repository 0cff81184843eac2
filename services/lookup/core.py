"""The lookup API's logic, pure: requests to subjects, state rows to answers, API keys.

The HTTP layer (``services/lookup/app.py``) reads the rows (``store.py``) and calls these.

* ``GET /v1/suppressions?email=…`` (or ``email_sha256``, ``phone``, ``phone_sha256``,
  ``customer_id``; exactly one), ``scope`` optional (a concrete scope; absent or ``ALL``:
  every scope).
* ``POST /v1/suppressions:check`` ``{"identifiers": [{"email": "…"}, {"customer_id": "…"}],
  "scope": "EMAIL_MARKETING"}``: up to ``MAX_BATCH`` identifiers; answers in the same order,
  an identifier that names nobody gets ``{"error": reason}`` instead of failing the batch.

An answer: ``{"subject": "email_sha256:…", "suppressed": bool, "scopes": {SCOPE: {"suppressed",
"since", "request_id", "action"}}}``. A person never asked about: not suppressed, no scopes.
A person who opted back in: not suppressed, with the since and request id of the opt-in.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.contract import Scope
from services.domain.subjects import (
    IDENTIFIER_KINDS,
    BadIdentifier,
    IdentifierKind,
    ScopeState,
    answer,
    parse_scope,
    subject_of,
)

MAX_BATCH = 1000


class BadRequest(ValueError):
    """A request the API refuses (400); ``reason`` is machine-readable and never echoes a value."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    def as_json(self) -> dict[str, str]:
        return {"error": self.reason, **({"detail": self.detail} if self.detail else {})}


@dataclass(frozen=True)
class Query:
    subject: str
    scope: Scope | None


@dataclass(frozen=True)
class Batch:
    items: tuple[str | BadIdentifier, ...]  # a subject, or why the identifier names nobody
    scope: Scope | None

    @property
    def subjects(self) -> list[str]:
        """The distinct subjects to read, in first-seen order."""
        return list(dict.fromkeys(i for i in self.items if isinstance(i, str)))


def _scope(value: object) -> Scope | None:
    if value is not None and not isinstance(value, str):
        raise BadRequest("invalid_scope")
    try:
        return parse_scope(value)
    except BadIdentifier as exc:
        raise BadRequest(exc.reason, "a concrete scope: EMAIL_MARKETING, POSTAL_MARKETING, ...") from None


_KINDS = {k: IdentifierKind(k) for k in IDENTIFIER_KINDS}


def _one_identifier(fields: Mapping[str, object], phone_region: str) -> str:
    if len(fields) == 1:  # the usual shape, {"email": "..."}: no scan of every kind
        ((name, value),) = fields.items()
        kind = _KINDS.get(name)
        if kind is not None and isinstance(value, str) and value:
            return subject_of(kind, value, phone_region)
    named = [k for k in IDENTIFIER_KINDS if fields.get(k) not in (None, "")]
    if len(named) != 1:
        raise BadIdentifier("one_identifier_needed")
    value = fields[named[0]]
    if not isinstance(value, str):
        raise BadIdentifier(f"invalid_{named[0]}")
    return subject_of(IdentifierKind(named[0]), value, phone_region)


def parse_query(params: Mapping[str, str], phone_region: str) -> Query:
    """``GET /v1/suppressions``'s query string."""
    unknown = set(params) - {*IDENTIFIER_KINDS, "scope"}
    if unknown:
        raise BadRequest("unknown_parameter", ", ".join(sorted(unknown)))
    try:
        subject = _one_identifier(params, phone_region)
    except BadIdentifier as exc:
        raise BadRequest(exc.reason, f"exactly one of {', '.join(IDENTIFIER_KINDS)}") from None
    return Query(subject, _scope(params.get("scope")))


def parse_batch(body: object, phone_region: str, max_batch: int = MAX_BATCH) -> Batch:
    """``POST /v1/suppressions:check``'s JSON body."""
    if not isinstance(body, dict) or not isinstance(body.get("identifiers"), list):
        raise BadRequest("invalid_body", 'a JSON object {"identifiers": [{"email": "..."}, ...]}')
    identifiers: list[object] = body["identifiers"]
    if len(identifiers) > max_batch:
        raise BadRequest("too_many_identifiers", f"at most {max_batch} per request")
    items: list[str | BadIdentifier] = []
    for item in identifiers:
        if not isinstance(item, dict):
            items.append(BadIdentifier("invalid_identifier"))
            continue
        try:
            items.append(_one_identifier(item, phone_region))
        except BadIdentifier as exc:
            items.append(exc)
    return Batch(tuple(items), _scope(body.get("scope")))


def single_response(query: Query, rows: Mapping[str, Sequence[ScopeState]]) -> dict[str, object]:
    return answer(query.subject, query.scope, rows.get(query.subject, ())).as_json()


def _answer_json(subject: str, scope: Scope | None, states: Sequence[ScopeState]) -> dict[str, object]:
    """``answer(...).as_json()``, without the intermediate objects (a batch makes 1,000)."""
    chosen = states if scope is None else [s for s in states if s.scope == scope.value]
    if not chosen:
        return {"subject": subject, "suppressed": False, "scopes": {}}
    if len(chosen) > 1:
        return answer(subject, scope, chosen).as_json()
    state = chosen[0]
    return {"subject": subject, "suppressed": state.suppressed, "scopes": {state.scope: state.as_json()}}


def batch_response(batch: Batch, rows: Mapping[str, Sequence[ScopeState]]) -> dict[str, object]:
    results: list[dict[str, object]] = []
    done: dict[str, dict[str, object]] = {}  # a subject asked twice is answered once
    for item in batch.items:
        if isinstance(item, BadIdentifier):
            results.append({"error": item.reason})
            continue
        found = done.get(item)
        if found is None:
            found = done[item] = _answer_json(item, batch.scope, rows.get(item, ()))
        results.append(found)
    return {
        "scope": batch.scope.value if batch.scope else None,
        "suppressed": sum(1 for r in results if r.get("suppressed") is True),
        "results": results,
    }


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key a request presents: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def authorized(key: str | None, keys: Sequence[bytes]) -> bool:
    """Is ``key`` one of ``keys``? Compared in constant time against every key."""
    if not key:
        return False
    given = key.encode("utf-8")
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(given, candidate)
    return found
