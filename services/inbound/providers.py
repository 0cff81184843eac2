"""The providers of this deployment, built from the settings (bad keys stop start-up)."""

from __future__ import annotations

from datetime import timedelta

from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.inbound.base import Provider
from services.inbound.mailgun import Mailgun
from services.inbound.sendgrid import SendGrid, load_public_key
from services.inbound.ses import Ses, load_certificates
from services.inbound.twilio_sms import TwilioSms


def providers_from_settings(settings: Settings) -> list[Provider]:
    """Mailgun and Twilio always; SendGrid with its public key; SES with its certificate."""
    max_age = timedelta(seconds=settings.inbound_max_age_seconds)
    skew = timedelta(seconds=settings.clock_skew_seconds)
    email_jurisdiction = settings.inbound_email_jurisdiction or None
    found: list[Provider] = []
    if settings.inbound_sendgrid_public_key.strip():
        key = load_public_key(settings.inbound_sendgrid_public_key)
        found.append(SendGrid(key, max_age, skew, email_jurisdiction))
    found.append(Mailgun(settings.inbound_mailgun_signing_key, max_age, skew, email_jurisdiction))
    if settings.inbound_sns_certificate is not None:
        if not settings.inbound_sns_topic_arns:
            raise ConfigurationError(
                "setting OPTOUT_INBOUND_SNS_TOPIC_ARNS must list the accepted topic ARNs "
                "when OPTOUT_INBOUND_SNS_CERTIFICATE is set"
            )
        found.append(
            Ses(
                tuple(load_certificates(settings.inbound_sns_certificate)),
                frozenset(settings.inbound_sns_topic_arns),
                timedelta(seconds=settings.inbound_sns_max_age_seconds),
                skew,
                email_jurisdiction,
            )
        )
    found.append(
        TwilioSms(
            settings.inbound_twilio_auth_token,
            settings.inbound_sms_jurisdiction or None,
            settings.inbound_sms_stop_reply,
            settings.inbound_sms_start_reply,
        )
    )
    return found
