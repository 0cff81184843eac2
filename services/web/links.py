"""Links for senders: per recipient, the RFC 8058 header pair and the footer URL.

``mint_link(settings, email=..., customer_id=...)`` is what a sending system calls (or
``optout link`` on the command line). The URL carries only the key id and ciphertext.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.common.clock import Clock, SystemClock
from services.common.contract import Scope
from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.web.requests import check_link
from services.web.tokens import KeyRing, Purpose, expiry, keyring_from_settings, make_claims, mint, verify

ONE_CLICK_POST = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class UnsubscribeLink:
    url: str  # also the footer link a person clicks
    token: str

    @property
    def list_unsubscribe(self) -> str:
        return f"<{self.url}>"

    @property
    def list_unsubscribe_post(self) -> str:
        return ONE_CLICK_POST

    def headers(self) -> dict[str, str]:
        """The two header fields a marketing email needs (RFC 2369 + RFC 8058)."""
        return {
            "List-Unsubscribe": self.list_unsubscribe,
            "List-Unsubscribe-Post": self.list_unsubscribe_post,
        }


def check_public_url(settings: Settings) -> None:
    """RFC 8058 one-click URIs must be HTTPS; refuse plain HTTP in production."""
    if settings.env.lower() == "production" and not settings.web_public_url.lower().startswith("https://"):
        raise ConfigurationError("OPTOUT_WEB_PUBLIC_URL must be an https:// URL when OPTOUT_ENV=production")


def _base(settings: Settings) -> str:
    check_public_url(settings)
    return settings.web_public_url.rstrip("/")


def mint_link(
    settings: Settings,
    *,
    customer_id: str | None = None,
    email: str | None = None,
    scopes: Iterable[Scope | str] = (Scope.EMAIL_MARKETING,),
    postal_address: dict[str, Any] | None = None,
    jurisdiction: str | None = None,
    ttl_days: int | None = None,
    ring: KeyRing | None = None,
    clock: Clock | None = None,
) -> UnsubscribeLink:
    """A fresh link for one recipient; ``PoisonMessage``/``ValueError`` if the pipeline could
    not act on what it would publish (e.g. EMAIL_MARKETING without an email address)."""
    keys = ring or keyring_from_settings(settings)
    now = (clock or SystemClock()).now()
    claims = make_claims(
        Purpose.UNSUBSCRIBE,
        scopes,
        customer_id=customer_id,
        email=email,
        postal_address=postal_address,
        jurisdiction=jurisdiction,
        expires_at=expiry(now, settings.web_token_ttl_days if ttl_days is None else ttl_days),
    )
    token = mint(keys, claims)
    check_link(
        verify(keys, token, now, Purpose.UNSUBSCRIBE),
        now,
        settings.destinations,
        settings.default_phone_region,
    )
    return UnsubscribeLink(url=f"{_base(settings)}/u/{token}", token=token)


def mint_gpc_token(
    settings: Settings,
    customer_id: str,
    *,
    jurisdiction: str | None = None,
    ttl_days: int | None = None,
    ring: KeyRing | None = None,
    clock: Clock | None = None,
) -> str:
    """A signed customer token for the GPC signal endpoint (POST body ``t`` or Bearer)."""
    keys = ring or keyring_from_settings(settings)
    now = (clock or SystemClock()).now()
    claims = make_claims(
        Purpose.GPC,
        [Scope.THIRD_PARTY_SHARING],
        customer_id=customer_id,
        jurisdiction=jurisdiction,
        expires_at=expiry(now, settings.web_token_ttl_days if ttl_days is None else ttl_days),
    )
    return mint(keys, claims)


def gpc_url(settings: Settings) -> str:
    """Where the signal goes: POST with the token in the body (``t``) or, from a script,
    ``Authorization: Bearer TOKEN``. Never the token in the URL (proxies log URLs)."""
    return f"{_base(settings)}{settings.web_gpc_path}"
