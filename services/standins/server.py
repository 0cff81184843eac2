"""``optout run standins``: the email provider and partner stand-ins and the Amazon SES
(v2) emulator (moto, contact list ``optout`` with topic ``marketing`` created), configured
from settings, served until stop is requested."""

from __future__ import annotations

import threading

from services.common.logging import get_logger
from services.common.settings import Settings
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.partners_api import PartnersStandin
from services.standins.ses_emulator import SesEmulator
from services.standins.web import StandinServer

log = get_logger(__name__)


def email_provider_from(settings: Settings) -> EmailProviderStandin:
    return EmailProviderStandin(
        token=settings.email_provider_token.get_secret_value(),
        failure_rate=settings.standin_failure_rate,
        rate_limit_per_second=settings.standin_rate_limit_per_second,
        retry_after_seconds=settings.standin_retry_after_seconds,
        rejected=settings.standin_rejected_emails,
    )


def partners_from(settings: Settings) -> PartnersStandin:
    return PartnersStandin(
        {p.name: p.token.get_secret_value() for p in settings.partners},
        failure_rate=settings.standin_failure_rate,
    )


def run(settings: Settings, stop: threading.Event) -> None:
    host = settings.standin_host
    with (
        StandinServer(
            email_provider_from(settings).handle, host, settings.standin_email_provider_port, "email_provider"
        ),
        StandinServer(partners_from(settings).handle, host, settings.standin_partners_port, "partners"),
        SesEmulator(host, settings.standin_ses_port),
    ):
        log.info("stand-ins serving; stop with SIGTERM or Ctrl-C")
        stop.wait()
