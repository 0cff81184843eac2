"""The connector kinds, and the connector of each destination in the destinations file.

``optout run connector NAME`` runs the destination ``NAME`` of the destinations file with
the connector its ``kind`` names. Adding a kind: a module per services/connectors/kinds.py
(``KIND``, an options model, ``build``), a loader below and ONE line in ``KINDS``.

A kind's module is imported only when a connector of that kind is built: every ``optout``
process checks the destinations file against ``KINDS`` at start-up, and importing every
kind would load boto (ses), paramiko (sftp_mail_house), httpx... into all of them
(README, "Process start-up"). tests/unit/test_startup_imports.py checks the keys are the
modules' ``KIND``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.common.contract import Destination
from services.common.errors import ConfigurationError
from services.common.settings import Settings

if TYPE_CHECKING:
    from services.connectors.kinds import Build
    from services.connectors.kit import Connector

ServiceMain = Callable[[Settings, threading.Event], None]


def _email_provider() -> Build:
    from services.connectors.email_provider import build

    return build


def _local_mail_house() -> Build:
    from services.connectors.mail_house import build

    return build


def _partners() -> Build:
    from services.connectors.third_party_sharing import build

    return build


def _sendgrid() -> Build:
    from services.connectors.sendgrid import build

    return build


def _mailgun() -> Build:
    from services.connectors.mailgun import build

    return build


def _webhook_partners() -> Build:
    from services.connectors.webhook_partners import build

    return build


def _sftp_mail_house() -> Build:
    from services.connectors.sftp_mail_house import build

    return build


def _ses() -> Build:
    from services.connectors.ses import build

    return build


def _sms_optout_list() -> Build:
    from services.connectors.sms_optout_list import build

    return build


# Kind -> a loader: imports the kind's module, returns its build(destination, settings).
KINDS: dict[str, Callable[[], Build]] = {
    "email_provider": _email_provider,
    "local_mail_house": _local_mail_house,
    "partners": _partners,
    "sendgrid": _sendgrid,
    "mailgun": _mailgun,
    "webhook_partners": _webhook_partners,
    "sftp_mail_house": _sftp_mail_house,
    "ses": _ses,
    "sms_optout_list": _sms_optout_list,
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
    build = KINDS[destination.kind]()
    return build(destination, settings)


def connector_runner(name: str, settings: Settings) -> ServiceMain:
    """``run(settings, stop)`` for the destination ``name`` of ``settings``' destinations file;
    ``ConfigurationError`` now if there is no such destination, its kind is unknown or the
    kind refuses its settings or credentials (built once to check, before any broker call)."""
    build_connector(settings, name).close()

    def run(run_settings: Settings, stop: threading.Event) -> None:
        from services.connectors.kit import run_connector

        run_connector(run_settings, build_connector(run_settings, name), stop)

    return run
