"""What every connector kind shares: how it reads its destination's options and credentials.

A connector *kind* (``sendgrid``, ``ses``, ``mailgun``, ``sftp_mail_house``,
``webhook_partners``, ...) is a module with::

    KIND = "sendgrid"

    class SendGridOptions(BaseModel):          # the destination's [settings] table
        model_config = OPTIONS_CONFIG
        base_url: str = "https://api.sendgrid.com"

    def build(destination: Destination, settings: Settings) -> Connector:
        options = parse_options(SendGridOptions, destination)
        api_key = require_credential(destination, "api_key")
        ...

A *destination* (one entry of the destinations file) names its kind; several destinations
may share a kind (two SendGrid accounts), each with its own name, topic, consumer group and
metrics label. Errors in options or credentials are ``ConfigurationError`` with one line
naming the destination and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from services.common.contract import Destination, Identifier
from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.connectors.kit import Connector

# Options tables refuse unknown keys (a typo must not be silently ignored) and are frozen.
OPTIONS_CONFIG = ConfigDict(extra="forbid", frozen=True)

OptionsT = TypeVar("OptionsT", bound=BaseModel)
Build = Callable[[Destination, Settings], Connector]


def parse_options(model: type[OptionsT], destination: Destination) -> OptionsT:
    """The destination's options as ``model``; one clear line when they are wrong."""
    try:
        return model.model_validate(dict(destination.options))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigurationError(
            f"destination {destination.id!r} ({destination.kind}): settings.{where}: {first['msg']}"
        ) from None


def require_credential(destination: Destination, name: str) -> SecretStr:
    """A credential the destinations file says where to find; one clear line when missing."""
    value = destination.credentials.get(name)
    if value is None or not value.get_secret_value():
        raise ConfigurationError(
            f"destination {destination.id!r} ({destination.kind}) needs credential {name!r}: "
            f"set credentials.{name} to an environment variable or a file in the destinations file"
        )
    return value


# Identifiers that are raw contact details (not hashes, not the business's own customer id).
RAW_CONTACT = frozenset({Identifier.EMAIL, Identifier.PHONE, Identifier.POSTAL_ADDRESS})


def require_hashes_only(destination: Destination) -> None:
    """For kinds that must never receive a raw email, phone or postal address (third
    parties): one clear line when the destinations file lists one in ``identifiers``."""
    raw = sorted(i.value for i in destination.identifiers & RAW_CONTACT)
    if raw:
        raise ConfigurationError(
            f"destination {destination.id!r} ({destination.kind}) receives hashes only: remove "
            f"{', '.join(raw)} from its identifiers (use email_sha256 / phone_sha256)"
        )
