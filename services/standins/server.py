"""``optout run standins``: the email provider, SendGrid, Mailgun, signed-webhook partner
stand-ins, the Amazon SES (v2) emulator (moto, contact list ``optout`` with topic
``marketing`` created), the AWS End User Messaging SMS stand-in (opt-out lists ``Default`` and
``optout``) and the SFTP mail house's importer when ``standin_sftp_inbox`` is set,
configured from settings, served until stop is requested."""

from __future__ import annotations

import threading
from pathlib import Path

from services.common.logging import get_logger
from services.common.settings import Settings
from services.standins.email_provider_api import EmailProviderStandin
from services.standins.mail_house_sftp import MailHouseSftpStandin
from services.standins.mailgun_api import MailgunStandin
from services.standins.partners_api import PartnersStandin
from services.standins.sendgrid_api import SendGridStandin
from services.standins.ses_emulator import SesEmulator
from services.standins.sms_optout_api import SmsOptOutStandin
from services.standins.web import StandinServer
from services.standins.webhook_receiver import WebhookPartnersStandin

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


def webhook_partners_from(settings: Settings) -> WebhookPartnersStandin:
    return WebhookPartnersStandin(
        {name: secrets.split() for name, secrets in settings.standin_webhook_secrets.items()},
        failure_rate=settings.standin_failure_rate,
    )


def sendgrid_from(settings: Settings) -> SendGridStandin:
    return SendGridStandin(
        api_key=settings.standin_sendgrid_api_key,
        failure_rate=settings.standin_failure_rate,
        rate_limit_per_second=settings.standin_rate_limit_per_second,
        rejected=settings.standin_rejected_emails,
    )


def mailgun_from(settings: Settings) -> MailgunStandin:
    return MailgunStandin(
        api_key=settings.standin_mailgun_api_key,
        failure_rate=settings.standin_failure_rate,
        rate_limit_per_second=settings.standin_rate_limit_per_second,
        rejected=settings.standin_rejected_emails,
    )


def sms_from(settings: Settings) -> SmsOptOutStandin:
    return SmsOptOutStandin(
        {settings.standin_sms_access_key_id: settings.standin_sms_secret_access_key},
        failure_rate=settings.standin_failure_rate,
        rate_limit_per_second=settings.standin_rate_limit_per_second,
    )


def run(settings: Settings, stop: threading.Event) -> None:
    host = settings.standin_host
    with (
        StandinServer(
            email_provider_from(settings).handle, host, settings.standin_email_provider_port, "email_provider"
        ),
        StandinServer(partners_from(settings).handle, host, settings.standin_partners_port, "partners"),
        StandinServer(
            webhook_partners_from(settings).handle,
            host,
            settings.standin_webhook_partners_port,
            "webhook_partners",
        ),
        StandinServer(sendgrid_from(settings).handle, host, settings.standin_sendgrid_port, "sendgrid"),
        StandinServer(mailgun_from(settings).handle, host, settings.standin_mailgun_port, "mailgun"),
        SesEmulator(host, settings.standin_ses_port),
        StandinServer(sms_from(settings).handle, host, settings.standin_sms_port, "sms"),
    ):
        importer = None
        if settings.standin_sftp_inbox:
            standin = MailHouseSftpStandin(Path(settings.standin_sftp_inbox))
            importer = threading.Thread(target=standin.run, args=(stop,), name="mail-house-sftp", daemon=True)
            importer.start()
        log.info("stand-ins serving; stop with SIGTERM or Ctrl-C")
        stop.wait()
        if importer is not None:
            importer.join(5)
