"""From a verified token and what was posted to the OptOutRequested fields. Pure.

Sources: the RFC 8058 one-click POST is ``ONE_CLICK``; the page a person fills in after
following the email's link is ``EMAIL_LINK``; the Global Privacy Control endpoint is
``GPC_SIGNAL``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

from services.common.contract import Action, Destinations, Scope, Source
from services.common.errors import PoisonMessage
from services.common.records import PostalAddressRecord
from services.domain.planning import applicable_destinations
from services.domain.validation import OptOutRequest, normalize_postal_address, validate_request
from services.web.device import device_event_id
from services.web.tokens import Claims, VerifiedToken, gpc_event_id, optin_event_id, request_event_id

MAX_FIELDS = 32
ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
# The separate choices the page offers, in page order.
CHOICES: tuple[Scope, ...] = (Scope.EMAIL_MARKETING, Scope.POSTAL_MARKETING, Scope.THIRD_PARTY_SHARING)
ADDRESS_FIELDS = (
    "addr_name",
    "addr_line1",
    "addr_line2",
    "addr_city",
    "addr_region",
    "addr_postal_code",
    "addr_country",
)

Form = dict[str, list[str]]


class FormError(ValueError):
    """The body is not a form we can read."""


class ChoiceError(ValueError):
    """What the person chose cannot be acted on; ``str()`` is shown to them."""


def parse_form(body: bytes, content_type: str) -> Form:
    """``application/x-www-form-urlencoded`` or ``multipart/form-data`` -> {name: [values]}."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return _parse_multipart(body, content_type)
    if kind not in ("application/x-www-form-urlencoded", ""):
        raise FormError(f"unsupported content type {kind!r}")
    try:
        text = body.decode("utf-8")
        return parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise FormError("unreadable form body") from None


def _parse_multipart(body: bytes, content_type: str) -> Form:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise FormError("multipart body without parts")
    form: Form = {}
    for count, part in enumerate(message.iter_parts()):
        if count >= MAX_FIELDS:
            raise FormError("too many fields")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        value = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        form.setdefault(name, []).append(value)
    return form


def is_one_click(form: Form) -> bool:
    """RFC 8058: the body carries ``List-Unsubscribe=One-Click``."""
    return [v.strip() for v in form.get(ONE_CLICK_FIELD, [])] == [ONE_CLICK_VALUE]


def _first(form: Form, name: str) -> str:
    values = form.get(name) or [""]
    return values[0].strip()


# Why a typed address needs a customer id (shown on the page and in errors).
ADDRESS_NEEDS_CUSTOMER = (
    "We can stop postal mail to an address typed here only for a link that names your "
    "customer account, so that the address can be checked against the one we have on file "
    "for you. This link does not, so please use the link in a recent letter from us, or "
    "contact us and we will help."
)


@dataclass(frozen=True)
class Choice:
    scopes: tuple[Scope, ...]
    postal_address: PostalAddressRecord | None
    typed: bool = False  # postal_address was typed on the page (not carried by the token)


def offers_postal(claims: Claims) -> bool:
    """The page offers postal mail when the token carries the address, or names the
    customer account a typed address is checked against."""
    return claims.postal_address is not None or claims.customer_id is not None


def accepts_typed_address(claims: Claims) -> bool:
    return claims.postal_address is None and claims.customer_id is not None


def address_from_form(form: Form) -> PostalAddressRecord | None:
    """The address the person typed, or None when they left it empty."""
    values = {name: _first(form, name) for name in ADDRESS_FIELDS}
    if not any(values.values()):
        return None
    raw = {
        "name": values["addr_name"],
        "lines": [values["addr_line1"], values["addr_line2"]],
        "city": values["addr_city"],
        "region": values["addr_region"] or None,
        "postal_code": values["addr_postal_code"],
        "country": values["addr_country"],
    }
    try:
        return normalize_postal_address(raw)
    except PoisonMessage as exc:
        raise ChoiceError(
            "Please check the postal address: street, town or city, postal code and a two-letter "
            f"country code (like US or GB) are needed ({exc.detail})."
        ) from None


def parse_choice(form: Form, token: VerifiedToken) -> Choice:
    """The page's form -> scopes (+ the postal address to use); ``ChoiceError`` to show.

    Postal mail uses the token's address; without one, an address typed on the page, but
    only when the token names a customer id (anyone holding a link could otherwise get a
    stranger's address suppressed)."""
    if _first(form, "choice") == "all":
        scopes: tuple[Scope, ...] = (Scope.ALL,)
    else:
        picked: set[Scope] = set()
        for value in form.get("scope", []):
            try:
                scope = Scope(value.strip().upper())
            except ValueError:
                raise ChoiceError("That choice is not one we offer.") from None
            if scope not in CHOICES:
                raise ChoiceError("That choice is not one we offer.")
            picked.add(scope)
        if not picked:
            raise ChoiceError("Choose at least one thing to stop, or use “Unsubscribe from all”.")
        scopes = tuple(sorted(picked))
    if Scope.POSTAL_MARKETING not in scopes:
        # An address matters only for postal mail (``ALL`` uses the token's, if any).
        return Choice(scopes, token.claims.postal_address)
    if token.claims.postal_address is not None:
        return Choice(scopes, token.claims.postal_address)
    # A typed address is bound to the token's customer id: the mail house suppresses it
    # only where it is the address on file for that customer (docs/web.md).
    if not accepts_typed_address(token.claims):
        raise ChoiceError(ADDRESS_NEEDS_CUSTOMER)
    typed = address_from_form(form)
    if typed is None:
        raise ChoiceError("To stop postal mail we need the postal address it is sent to.")
    return Choice(scopes, typed, typed=True)


def _identity(token: VerifiedToken) -> dict[str, Any]:
    claims = token.claims
    return {"customer_id": claims.customer_id, "email": claims.email, "jurisdiction": claims.jurisdiction}


def one_click_fields(token: VerifiedToken, now: datetime, round_: int = 0) -> dict[str, Any]:
    """``round_``: resubscribes recorded through this token before (``request_event_id``)."""
    scopes = token.claims.scopes
    return {
        **_identity(token),
        "event_id": request_event_id(token, scopes, round_=round_),
        "scopes": [s.value for s in scopes],
        "source": Source.ONE_CLICK.value,
        "postal_address": token.claims.postal_address,
        "requested_at": now,
    }


def page_fields(token: VerifiedToken, choice: Choice, now: datetime, round_: int = 0) -> dict[str, Any]:
    typed = choice.postal_address if choice.typed else None
    return {
        **_identity(token),
        "event_id": request_event_id(token, choice.scopes, typed, round_),
        "scopes": [s.value for s in choice.scopes],
        "source": Source.EMAIL_LINK.value,
        "postal_address": choice.postal_address,
        "requested_at": now,
    }


def gpc_fields(token: VerifiedToken, now: datetime) -> dict[str, Any]:
    customer_id = token.claims.customer_id
    if not customer_id:
        raise PoisonMessage("no_identifier", "a GPC token needs a customer id")
    return {
        "event_id": gpc_event_id(customer_id, token.claims.jurisdiction),
        "customer_id": customer_id,
        "jurisdiction": token.claims.jurisdiction,
        "scopes": [Scope.THIRD_PARTY_SHARING.value],
        "source": Source.GPC_SIGNAL.value,
        "requested_at": now,
    }


def device_gpc_fields(device_id: str, now: datetime) -> dict[str, Any]:
    """A browser without a token that sent ``Sec-GPC: 1``: an opt-out of sharing for its
    pseudonymous device id alone (contract version 2), one per device."""
    return {
        "event_id": device_event_id(device_id),
        "device_id": device_id,
        "scopes": [Scope.THIRD_PARTY_SHARING.value],
        "source": Source.GPC_SIGNAL.value,
        "requested_at": now,
        "action": Action.OPT_OUT.value,
    }


def resubscribable(claims: Claims, opted_out: Iterable[str]) -> list[Scope]:
    """The page's choices a person may opt back into: those their requests through this
    link stopped (``ALL`` stands for every choice the link can reach), in page order."""
    stopped = set(opted_out)
    return [
        scope
        for scope in CHOICES
        if (scope.value in stopped or Scope.ALL.value in stopped)
        and (scope is not Scope.POSTAL_MARKETING or claims.postal_address is not None)
    ]


def latest_actions(history: Iterable[tuple[datetime, str, Sequence[str]]]) -> dict[Scope, str]:
    """Per page choice, the action of the newest request that covers it (``ALL`` covers
    every choice), from ``(requested_at, action, scopes)``; on a tie the opt-out wins, as
    in the pipeline."""
    latest: dict[Scope, tuple[datetime, int, str]] = {}
    for requested_at, action, scopes in history:
        rank = 1 if action == Action.OPT_OUT.value else 0
        covered = CHOICES if Scope.ALL.value in scopes else [s for s in CHOICES if s.value in scopes]
        for scope in covered:
            if scope not in latest or (requested_at, rank) > latest[scope][:2]:
                latest[scope] = (requested_at, rank, action)
    return {scope: value[2] for scope, value in latest.items()}


def parse_resubscribe(form: Form, offered: Sequence[Scope]) -> tuple[Scope, ...]:
    """The scopes ticked on the resubscribe form; ``ChoiceError`` to show."""
    picked: set[Scope] = set()
    for value in form.get("scope", []):
        try:
            scope = Scope(value.strip().upper())
        except ValueError:
            raise ChoiceError("That choice is not one we offer.") from None
        if scope not in offered:
            raise ChoiceError("That choice is not one we offer.")
        picked.add(scope)
    if not picked:
        raise ChoiceError("Choose at least one thing to receive again.")
    return tuple(sorted(picked))


def resubscribe_fields(
    token: VerifiedToken, scopes: Sequence[Scope], now: datetime, round_: int = 0
) -> dict[str, Any]:
    """An explicit opt-in (action OPT_IN, contract version 2) for ``scopes`` of the token's
    person; its event id is distinct from the opt-outs' (``optin_event_id``)."""
    address = token.claims.postal_address if Scope.POSTAL_MARKETING in scopes else None
    return {
        **_identity(token),
        "event_id": optin_event_id(token, scopes, round_),
        "scopes": [s.value for s in scopes],
        "source": Source.EMAIL_LINK.value,
        "postal_address": address,
        "requested_at": now,
        "action": Action.OPT_IN.value,
    }


def check_actionable(request: OptOutRequest, destinations: Destinations) -> None:
    """Refuse at the door what intake would dead-letter (a scope no destination can serve)."""
    applicable_destinations(request, destinations)


def check_link(
    token: VerifiedToken, now: datetime, destinations: Destinations, phone_region: str = "US"
) -> OptOutRequest:
    """What the one-click POST of ``token`` would publish, validated like intake does.

    ``optout link`` calls it before handing out a link, so no link can produce a request
    the pipeline would dead-letter."""
    fields = one_click_fields(token, now)
    if fields["postal_address"] is not None:
        fields["postal_address"] = {"region": None, **fields["postal_address"]}
    request = validate_request(fields, now, timedelta(0), phone_region)
    check_actionable(request, destinations)
    return request
