"""The connector kinds, and the connector of each destination in the destinations file.

``optout run connector NAME`` runs the destination ``NAME`` of the destinations file with
the connector its ``kind`` names. Adding a kind: a module per services/connectors/kinds.py
(``KIND``, an options model, ``build``) and ONE line in ``KINDS`` below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from services.common.contract import Destination
from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.connectors import (
    email_provider,
    mail_house,
    mailgun,
    sendgrid,
    ses,
    sftp_mail_house,
    sms_optout_list,
    third_party_sharing,
    webhook_partners,
)
from services.connectors.kinds import Build
from services.connectors.kit import Connector, run_connector

ServiceMain = Callable[[Settings, threading.Event], None]

# Kind -> build(destination, settings). One line per kind.
KINDS: dict[str, Build] = {
    email_provider.KIND: email_provider.build,
    mail_house.KIND: mail_house.build,
    third_party_sharing.KIND: third_party_sharing.build,
    sendgrid.KIND: sendgrid.build,
    mailgun.KIND: mailgun.build,
    webhook_partners.KIND: webhook_partners.build,
    sftp_mail_house.KIND: sftp_mail_house.build,
    ses.KIND: ses.build,
    sms_optout_list.KIND: sms_optout_list.build,
}


def check_destinations(settings: Settings) -> None:
    """Every destination of the destinations file names a known kind; one line per one that
    does not, in one ``ConfigurationError`` (every command checks this at start-up)."""
    known = ", ".join(sorted(KINDS))
    problems = [
        f"destination {d.id!r}: unknown kind {d.kind!r} (known: {known})"
        for d in settings.destinations
        if d.kind not in KINDS
    ]
    if problems:
        raise ConfigurationError("\n".join(problems))


def destination_of(settings: Settings, name: str) -> Destination:
    """Destination ``name`` of the destinations file, its kind known; else one clear line."""
    destination = settings.destinations.get(name)
    if destination is None:
        known = ", ".join(settings.destinations.names) or "none"
        raise ConfigurationError(
            f"unknown connector {name!r}: not a destination in the destinations file (known: {known})"
        )
    if destination.kind not in KINDS:
        check_destinations(settings)
    return destination


def build_connector(settings: Settings, name: str) -> Connector:
    """The connector of destination ``name``, built by its kind (which checks its options and
    credentials, raising ``ConfigurationError``)."""
    destination = destination_of(settings, name)
    return KINDS[destination.kind](destination, settings)


def connector_runner(name: str, settings: Settings) -> ServiceMain:
    """``run(settings, stop)`` for the destination ``name`` of ``settings``' destinations file;
    ``ConfigurationError`` now if there is no such destination, its kind is unknown or the
    kind refuses its settings or credentials (built once to check, before any broker call)."""
    build_connector(settings, name).close()

    def run(run_settings: Settings, stop: threading.Event) -> None:
        run_connector(run_settings, build_connector(run_settings, name), stop)

    return run
