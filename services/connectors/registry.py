"""The connectors ``optout run connector NAME`` knows. Adding one: a ``Connector`` class
with a ``from_settings`` factory, one entry here, one ``Destination`` in the contract."""

from __future__ import annotations

import threading
from collections.abc import Callable

from services.common.contract import DESTINATIONS_BY_ID
from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.connectors.email_provider import EmailProviderConnector
from services.connectors.kit import Connector, run_connector
from services.connectors.mail_house import MailHouseConnector
from services.connectors.third_party_sharing import ThirdPartySharingConnector

ConnectorFactory = Callable[[Settings], Connector]
ServiceMain = Callable[[Settings, threading.Event], None]

CONNECTORS: dict[str, ConnectorFactory] = {
    EmailProviderConnector.destination: EmailProviderConnector.from_settings,
    MailHouseConnector.destination: MailHouseConnector.from_settings,
    ThirdPartySharingConnector.destination: ThirdPartySharingConnector.from_settings,
}

_UNROUTED = set(CONNECTORS) - set(DESTINATIONS_BY_ID)
if _UNROUTED:  # a connector without a destination in the contract would never get a command
    raise ConfigurationError(f"connectors without a destination: {', '.join(sorted(_UNROUTED))}")


def connector_runner(name: str) -> ServiceMain:
    """``run(settings, stop)`` for the connector ``name``; ``ConfigurationError`` if unknown."""
    factory = CONNECTORS.get(name)
    if factory is None:
        known = ", ".join(sorted(CONNECTORS))
        raise ConfigurationError(f"unknown connector {name!r}; known: {known}")
    chosen = factory

    def run(settings: Settings, stop: threading.Event) -> None:
        run_connector(settings, chosen(settings), stop)

    return run
