"""HTML pages of the unsubscribe flow: plain string templates, every value escaped.

No JavaScript, no external resources: one inline stylesheet allowed by its hash in the
Content-Security-Policy. Mobile-first, large tap targets, visible focus, labelled
controls, status messages in ARIA live regions, contrast at least 4.5:1 everywhere.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from services.common.contract import Scope
from services.domain.identity import mask_email
from services.web.requests import (
    ADDRESS_FIELDS,
    ADDRESS_NEEDS_CUSTOMER,
    CHOICES,
    accepts_typed_address,
    offers_postal,
)
from services.web.tokens import Claims

CSS = """\
*{box-sizing:border-box}
html{color-scheme:light}
body{margin:0;font:1.0625rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;\
color:#1b1b1b;background:#f3f4f6}
main{max-width:36rem;margin:0 auto;padding:1rem}
.card{background:#fff;border:1px solid #d1d5db;border-radius:12px;padding:1.25rem}
h1{font-size:1.5rem;line-height:1.25;margin:.25rem 0 .75rem}
h2{font-size:1.125rem;margin:1.75rem 0 .5rem}
p{margin:.5rem 0}
.who{font-weight:700;overflow-wrap:anywhere}
.hint{color:#4b5563;font-size:.9375rem}
a{color:#1d4ed8;text-underline-offset:2px}
button{display:block;width:100%;min-height:48px;margin:.75rem 0 .25rem;padding:.75rem 1rem;font:inherit;\
font-weight:700;border-radius:8px;cursor:pointer}
.primary{background:#b3261e;color:#fff;border:2px solid #b3261e}
.primary:hover{background:#8c1d18}
.secondary{background:#fff;color:#1d4ed8;border:2px solid #1d4ed8}
.secondary:hover{background:#eff6ff}
:focus-visible{outline:3px solid #1d4ed8;outline-offset:3px}
button:focus-visible{outline:3px solid #111827;outline-offset:3px}
fieldset{border:1px solid #d1d5db;border-radius:8px;padding:.25rem 1rem .75rem;margin:0}
legend{font-weight:700;padding:0 .25rem}
.opt{display:flex;gap:.75rem;align-items:flex-start;padding:.625rem 0;border-bottom:1px solid #e5e7eb}
.opt:last-child{border-bottom:0}
.opt input{width:1.5rem;height:1.5rem;margin:.125rem 0 0;flex:none;accent-color:#1d4ed8}
.opt label{flex:1;font-weight:600}
.opt .hint{display:block;font-weight:400}
details{margin:.75rem 0 0}
summary{cursor:pointer;color:#1d4ed8;font-weight:700;padding:.5rem 0}
.field{margin:.625rem 0}
.field label{display:block;font-weight:600;margin-bottom:.25rem}
.field input{width:100%;min-height:44px;padding:.5rem .625rem;font:inherit;color:#1b1b1b;\
border:1px solid #6b7280;border-radius:6px;background:#fff}
.alert{border-left:4px solid #b3261e;background:#fef2f2;padding:.75rem 1rem;margin:0 0 1rem;border-radius:4px}
.ok{border-left:4px solid #15803d;background:#f0fdf4;padding:.75rem 1rem;margin:0 0 1rem;border-radius:4px}
.ok h1{margin-top:0}
.wait{border-left:4px solid #a16207;background:#fefce8;padding:.75rem 1rem;margin:0 0 1rem;border-radius:4px}
.wait h1{margin-top:0}
ol,ul{padding-left:1.25rem}
li{margin:.375rem 0}
.requests{list-style:none;padding:0}
.requests li{border:1px solid #e5e7eb;border-radius:8px;padding:.75rem 1rem;margin:.5rem 0}
.state{display:inline-block;padding:.125rem .625rem;border-radius:999px;font-weight:700;font-size:.9375rem}
.state-confirmed{background:#dcfce7;color:#14532d}
.state-pending{background:#fef9c3;color:#713f12}
.state-attention{background:#fee2e2;color:#7f1d1d}
.state-none{background:#e5e7eb;color:#1f2937}
code{font-size:.875rem;overflow-wrap:anywhere}
.links a{display:inline-block;padding:.5rem 0;margin-right:1.25rem}
@media (min-width:40rem){main{padding:2.5rem 1rem}.card{padding:2rem}}
"""

CSS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src '{CSS_HASH}'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

SCOPE_TEXT = {
    Scope.EMAIL_MARKETING: ("Marketing email", "Offers and newsletters sent to your inbox."),
    Scope.POSTAL_MARKETING: ("Postal mail", "Catalogues and letters sent to your address."),
    Scope.THIRD_PARTY_SHARING: (
        "Sharing with third parties",
        "Selling or sharing your details with other companies.",
    ),
    Scope.ALL: ("All marketing", "Marketing email, postal mail and sharing with third parties."),
}

STATE_TEXT = {
    "confirmed": ("confirmed", "Confirmed", "state-confirmed"),
    "pending": ("pending", "In progress", "state-pending"),
    "needs attention": ("needs attention", "Needs attention", "state-attention"),
    "not yet received": ("not yet received", "Not yet received", "state-none"),
}


@dataclass(frozen=True)
class RequestView:
    """One request as the status page shows it."""

    event_id: str
    state: str  # confirmed | pending | needs attention
    scopes: tuple[str, ...]
    requested_at: datetime
    due_at: datetime
    confirmed_at: datetime | None
    destinations_done: int
    destinations_total: int
    action: str = "OPT_OUT"  # OPT_IN: a resubscribe (contract version 2)
    # The audit trail (services/common/audit.py): (when, step), oldest first.
    history: tuple[tuple[datetime, str], ...] = ()


# What each audit step means to the person (no system names: those are ours).
HISTORY_TEXT = {
    "recorded": "Received",
    "enriched": "Matched to your customer record",
    "command_sent": "Sent to one of our systems",
    "command_resent": "Sent again to one of our systems",
    "opted_in": "Your choice to receive messages again took effect",
    "superseded": "A newer request of yours already applies",
    "acknowledged": "One of our systems answered",
    "confirmed": "Done everywhere",
    "needs_attention": "Being looked at by our team",
    "purged": "Your contact details were deleted from our records",
    "erased": "Your data was erased",
    "reconcile_resent": "Checked with one of our systems and sent to it again",
    "replayed": "Sent to a new or restored system of ours",
}


def _history(view: RequestView) -> str:
    if not view.history:
        return ""
    items = "".join(
        f"<li>{_e(f'{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC')}: {_e(HISTORY_TEXT.get(step, step))}</li>"
        for at, step in view.history
    )
    return f'<details class="history"><summary>History</summary><ol>{items}</ol></details>'


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _date(moment: datetime) -> str:
    return f"{moment:%d %B %Y}".lstrip("0")


def _layout(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f'<body><main id="main"><div class="card">{body}</div></main></body></html>\n'
    )


def _who(claims: Claims) -> str:
    if claims.email:
        return f'<span class="who">{_e(mask_email(claims.email))}</span>'
    return "your account"


def link_base(token: str) -> str:
    """The page's own URL (the link from the email: the one place the token is in a URL)."""
    return f"/u/{quote(token, safe='.-_')}"


# The page's forms post here, with the token in the body (``t``), so that it never appears
# in a URL a proxy logs beyond the link the person followed.
CHOOSE_ACTION = "/u/choose"
STATUS_ACTION = "/u/status"


def _token_field(token: str) -> str:
    return f'<input type="hidden" name="t" value="{_e(token)}">'


def _status_form(token: str, label: str, refs: Sequence[str] = (), css: str = "secondary") -> str:
    hidden = "".join(f'<input type="hidden" name="ref" value="{_e(ref)}">' for ref in refs)
    return (
        f'<form method="post" action="{STATUS_ACTION}">{_token_field(token)}{hidden}'
        f'<button class="{css}" type="submit">{_e(label)}</button></form>'
    )


def _scope_list(scopes: Iterable[str]) -> str:
    names = []
    for value in scopes:
        try:
            names.append(SCOPE_TEXT[Scope(value)][0].lower())
        except ValueError:
            names.append(value)
    return _e(", ".join(names))


def choose_page(
    token: str,
    claims: Claims,
    error: str | None = None,
    selected: Sequence[Scope] = (),
    address: dict[str, str] | None = None,
    resubscribe: Sequence[Scope] = (),
    resubscribe_error: str | None = None,
) -> str:
    has_address = claims.postal_address is not None
    postal = offers_postal(claims)
    alert = (
        f'<div class="alert" role="alert" id="problem"><strong>There is a problem.</strong> {_e(error)}</div>'
        if error
        else ""
    )
    if has_address:
        all_hint = "Stops marketing email, postal mail and sharing your details with third parties."
    elif postal:
        all_hint = (
            "Stops marketing email and sharing your details with third parties. To stop postal "
            "mail too, choose it below and give your address."
        )
    else:
        all_hint = "Stops marketing email and sharing your details with third parties."
    options = []
    for scope in CHOICES:
        if scope is Scope.POSTAL_MARKETING and not postal:
            continue
        label, hint = SCOPE_TEXT[scope]
        ident = f"scope-{scope.value.lower().replace('_', '-')}"
        checked = " checked" if scope in selected else ""
        options.append(
            f'<div class="opt"><input type="checkbox" name="scope" value="{_e(scope.value)}" '
            f'id="{ident}" aria-describedby="{ident}-hint"{checked}>'
            f'<label for="{ident}">{_e(label)}<span class="hint" id="{ident}-hint">'
            f"{_e(hint)}</span></label></div>"
        )
    wants_postal = bool(address) or Scope.POSTAL_MARKETING in selected
    if accepts_typed_address(claims):
        address_block = _address_fields(address or {}, open_=wants_postal)
    elif postal:
        address_block = ""
    else:
        address_block = f'<p class="hint" id="postal-hint">Postal mail: {_e(ADDRESS_NEEDS_CUSTOMER)}</p>'
    body = (
        f"{alert}<h1>Unsubscribe</h1>"
        f"<p>These choices are for {_who(claims)}.</p>"
        f'<form method="post" action="{CHOOSE_ACTION}">{_token_field(token)}'
        '<input type="hidden" name="choice" value="all">'
        '<button class="primary" type="submit" aria-describedby="all-hint">'
        "Unsubscribe from all marketing</button></form>"
        f'<p class="hint" id="all-hint">{_e(all_hint)}</p>'
        f'<h2 id="pick-heading">Or choose what to stop</h2>'
        f'<form method="post" action="{CHOOSE_ACTION}" aria-labelledby="pick-heading">'
        f"{_token_field(token)}"
        f"<fieldset><legend>Stop:</legend>{''.join(options)}</fieldset>"
        f"{address_block}"
        '<button class="secondary" type="submit">Save my choices</button></form>'
        '<p class="hint">Nothing changes until you press a button.</p>'
        f"{_resubscribe_form(token, resubscribe, resubscribe_error)}"
        f"{_status_form(token, 'See the status of a request you already made')}"
    )
    return _layout("Unsubscribe", body)


RESUBSCRIBE_ACTION = "/u/resubscribe"


def _resubscribe_form(token: str, offered: Sequence[Scope], error: str | None) -> str:
    """ "Changed your mind?": opt back in to what this link stopped (no JavaScript)."""
    if not offered:
        return ""
    alert = f'<div class="alert" role="alert" id="resubscribe-problem">{_e(error)}</div>' if error else ""
    options = []
    for scope in offered:
        label, hint = SCOPE_TEXT[scope]
        ident = f"resub-{scope.value.lower().replace('_', '-')}"
        options.append(
            f'<div class="opt"><input type="checkbox" name="scope" value="{_e(scope.value)}" '
            f'id="{ident}" checked><label for="{ident}">{_e(label)}<span class="hint">'
            f"{_e(hint)}</span></label></div>"
        )
    return (
        f'<h2 id="resubscribe-heading">Changed your mind?</h2>{alert}'
        f'<form method="post" action="{RESUBSCRIBE_ACTION}" aria-labelledby="resubscribe-heading">'
        f"{_token_field(token)}"
        f"<fieldset><legend>You stopped these. Receive again:</legend>{''.join(options)}</fieldset>"
        '<button class="secondary" type="submit" id="resubscribe">Resubscribe</button></form>'
    )


def resubscribed_page(
    token: str, claims: Claims, event_id: str, scopes: Sequence[str], due_at: datetime
) -> str:
    base = link_base(token)
    body = (
        '<div class="ok" role="status"><h1>Resubscribed</h1>'
        f"<p>We have your request to receive again: {_scope_list(scopes)}, for {_who(claims)}.</p></div>"
        "<p>We tell each of our systems that had stopped, and the status turns to "
        f"<strong>Confirmed</strong> when all of them have, at the latest by {_e(_date(due_at))}.</p>"
        f"<p>Your reference: <code>{_e(event_id)}</code></p>"
        f"{_status_form(token, 'Check the status', [event_id])}"
        f'<p class="links"><a href="{_e(base)}">Back to your choices</a></p>'
    )
    return _layout("Resubscribed", body)


def _address_fields(values: dict[str, str], open_: bool) -> str:
    labels = {
        "addr_name": ("Full name", "name"),
        "addr_line1": ("Street address", "address-line1"),
        "addr_line2": ("Address line 2 (optional)", "address-line2"),
        "addr_city": ("Town or city", "address-level2"),
        "addr_region": ("State or region (optional)", "address-level1"),
        "addr_postal_code": ("Postal code", "postal-code"),
        "addr_country": ("Country code (like US or GB)", "country"),
    }
    fields = []
    for name in ADDRESS_FIELDS:
        label, autocomplete = labels[name]
        ident = name.replace("_", "-")
        fields.append(
            f'<div class="field"><label for="{ident}">{_e(label)}</label>'
            f'<input type="text" id="{ident}" name="{name}" autocomplete="{autocomplete}" '
            f'value="{_e(values.get(name, ""))}"></div>'
        )
    return (
        f"<details{' open' if open_ else ''}><summary>Postal mail: add the address we send "
        f'it to</summary><p class="hint">We stop postal mail to this address when it is the '
        f"address we have on file for your account.</p>{''.join(fields)}</details>"
    )


def received_page(token: str, claims: Claims, event_id: str, scopes: Sequence[str], due_at: datetime) -> str:
    base = link_base(token)
    body = (
        '<div class="ok" role="status"><h1>Request received</h1>'
        f"<p>We have your request to stop: {_scope_list(scopes)}, for {_who(claims)}.</p></div>"
        "<h2>What happens next</h2><ol>"
        "<li>We tell each of our systems that holds your details to stop.</li>"
        "<li>When every one of them has confirmed, the status turns to "
        f"<strong>Confirmed</strong>. That usually takes minutes, and at the latest by "
        f"{_e(_date(due_at))}.</li>"
        "<li>A message that was already on its way may still arrive for a short while.</li></ol>"
        f"<p>Your reference: <code>{_e(event_id)}</code></p>"
        f"{_status_form(token, 'Check the status', [event_id])}"
        f'<p class="links"><a href="{_e(base)}">Change other choices</a></p>'
    )
    return _layout("Request received", body)


def overall_state(views: Sequence[RequestView]) -> str:
    if not views:
        return "not yet received"
    states = {v.state for v in views}
    if "needs attention" in states:
        return "needs attention"
    if states == {"confirmed"}:
        return "confirmed"
    return "pending"


def status_page(token: str, claims: Claims, views: Sequence[RequestView], refs: Sequence[str] = ()) -> str:
    base = link_base(token)
    overall = overall_state(views)
    key, text, css = STATE_TEXT[overall]
    if views:
        items = []
        for view in views:
            v_key, v_text, v_css = STATE_TEXT[view.state]
            detail = (
                f"Confirmed {_date(view.confirmed_at)}."
                if view.confirmed_at
                else f"{view.destinations_done} of {view.destinations_total} systems done; "
                f"due by {_date(view.due_at)}."
            )
            verb = "Receive again" if view.action == "OPT_IN" else "Stop"
            items.append(
                f"<li><strong>{verb}: {_scope_list(view.scopes)}</strong><br>"
                f'<span class="state {v_css}" data-state="{_e(v_key)}">{_e(v_text)}</span> '
                f'<span class="hint">Requested {_e(_date(view.requested_at))}. {_e(detail)}</span>'
                f'<br><span class="hint">Reference <code>{_e(view.event_id)}</code></span>'
                f"{_history(view)}</li>"
            )
        listing = f'<ul class="requests">{"".join(items)}</ul>'
    else:
        listing = (
            "<p>We have not received a request from this link yet. If you just sent one, "
            "check again in a minute.</p>"
        )
    body = (
        "<h1>Status of your request</h1>"
        f"<p>For {_who(claims)}: "
        f'<span class="state {css}" id="overall" data-state="{_e(key)}" role="status">'
        f"{_e(text)}</span></p>"
        f"{listing}"
        f"{_status_form(token, 'Check again', refs)}"
        f'<p class="links"><a href="{_e(base)}">Back to your choices</a></p>'
    )
    return _layout("Status of your request", body)


def message_page(title: str, message: str) -> str:
    return _layout(title, f"<h1>{_e(title)}</h1><p>{_e(message)}</p>")


BAD_LINK = message_page(
    "This link does not work",
    "The link is damaged, has expired or was not made by us, so nothing was changed. Use the "
    "unsubscribe link in a recent email from us, or contact us and we will help.",
)
UNAVAILABLE = message_page(
    "Please try again in a moment",
    "We could not record your request just now, so nothing was changed yet. Please try again in a minute.",
)
TOO_MANY = message_page("Too many requests", "Please wait a moment and try again.")
TOO_LARGE = message_page("Request too large", "That request was larger than we accept.")
NOT_FOUND = message_page("Page not found", "There is no page at this address.")


# --- Global Privacy Control ------------------------------------------------------------
# CCPA regulations § 7025(c)(6) (in force 2026): the business must display whether it has
# processed the opt-out preference signal, e.g. "Opt-Out Request Honored".
GPC_STATES = {
    # key: (headline, css class of the box)
    "honored": ("Opt-Out Request Honored", "ok"),
    "pending": ("Opt-out request received, not yet honored", "wait"),
    "recorded": ("Opt-out request recorded, not yet honored", "wait"),
    "attention": ("Opt-out request not yet honored", "alert"),
    "unknown": ("Opt-out request recorded", "wait"),
    "none": ("No Global Privacy Control signal", "ok"),
}


def gpc_state(views: Sequence[RequestView], recorded: bool, status_known: bool = True) -> str:
    """honored | pending | recorded | attention | unknown | none, from the request's state in
    the database (``views``) and whether a signal was recorded for it now or before."""
    if not status_known:
        return "unknown" if recorded else "none"
    if not views:
        return "recorded" if recorded else "none"
    overall = overall_state(views)
    return {"confirmed": "honored", "needs attention": "attention"}.get(overall, "pending")


def gpc_page(
    state: str, signal: bool, views: Sequence[RequestView], gpc_path: str, token: str | None = None
) -> str:
    """What we did with this browser's GPC signal (by its cookie), or an account's (by its
    GPC ``token``), without JavaScript. "Check again" is a link (a browser) or a form
    posting the token (an account: never a token in a URL)."""
    whom = "your account" if token else "this browser"
    headline, css = GPC_STATES[state]
    view = views[0] if views else None
    if state == "honored" and view is not None and view.confirmed_at is not None:
        detail = (
            f"We do not sell or share personal information linked to {whom} with third parties. "
            f"Every system that shares data confirmed it on {_date(view.confirmed_at)}."
        )
    elif state == "pending" and view is not None:
        detail = (
            f"We are telling every system that shares data to stop for {whom}: "
            f"{view.destinations_done} of {view.destinations_total} done; due by {_date(view.due_at)}."
        )
    elif state == "recorded":
        detail = (
            f"We recorded the opt-out of sale and sharing for {whom} and are passing it on. "
            "This usually takes minutes."
        )
    elif state == "attention":
        detail = (
            "A system that shares data has not accepted the opt-out yet. We have been alerted and "
            "will resolve it; nothing is needed from you."
        )
    elif state == "unknown":
        detail = (
            f"We recorded the opt-out of sale and sharing for {whom}, but cannot look up its "
            "progress right now. Please check again in a minute."
        )
    else:
        detail = (
            "Your browser is not sending a Global Privacy Control signal, so nothing was changed. "
            "Turn on Global Privacy Control in your browser's privacy settings and it will be "
            "honoured here without anything else to do."
        )
    note = ""
    if not signal and state != "none":
        note = (
            '<p class="hint">Your browser is not sending the signal right now; the opt-out it '
            "sent before still stands.</p>"
        )
    elif signal:
        note = (
            '<p class="hint">Your browser sends Global Privacy Control (<code>Sec-GPC: 1</code>). '
            "We treat it as a request to opt out of the sale and sharing of your personal "
            "information, without asking you for anything.</p>"
        )
    reference = f'<p class="hint">Reference <code>{_e(view.event_id)}</code></p>' if view is not None else ""
    if token:
        again = (
            f'<form method="post" action="{_e(gpc_path)}">{_token_field(token)}'
            '<button class="secondary" type="submit">Check again</button></form>'
        )
    else:
        again = f'<p class="links"><a href="{_e(gpc_path)}" id="check-again">Check again</a></p>'
    body = (
        f'<div class="{css}" role="status"><h1 id="gpc-state" data-state="{_e(state)}">'
        f"{_e(headline)}</h1><p>{_e(detail)}</p></div>"
        f"{note}{reference}"
        f"{again}"
    )
    return _layout("Global Privacy Control", body)
