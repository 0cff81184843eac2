"""Typed, validated settings from ``OPTOUT_*`` environment variables (and ``.env``).

One frozen object per process. Secrets are ``SecretStr``: never printed, never
logged. ``kafka_config()`` is the one place that yields the librdkafka dict.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from datetime import date
from functools import lru_cache
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from services.common.contract import Destinations
from services.common.destinations import load_destinations
from services.common.errors import ConfigurationError

# DEV ONLY: the well-known key of the default OPTOUT_SUPPRESSION_KEYS (base64url of these
# 32 bytes). The suppression list refuses it when OPTOUT_ENV=production
# (services/suppression/keys.py); generate real keys with `optout suppression-list generate-key`.
DEV_SUPPRESSION_KEY = b"optout-DEV-ONLY-suppression-key!"
DEV_SUPPRESSION_KEYS = '{"dev": "b3B0b3V0LURFVi1PTkxZLXN1cHByZXNzaW9uLWtleSE"}'
DEV_LOOKUP_API_KEY = "dev-lookup-api-key"

# Each consuming service's own OPTOUT_BATCH_LINGER_MS and OPTOUT_BATCH_INTERVAL_MS when they
# are not set (the consume loop's ``linger_ms`` and ``interval_ms``). A batch costs each service
# a few ms of CPU whatever its size, and intake sets the pipeline's cadence: it writes a batch's
# commands to every command topic at once, so each connector takes about one batch per intake
# batch. Intake starts a batch at most every INTAKE_BATCH_INTERVAL_MS (fewer, larger batches
# everywhere at low rates; no wait once a batch takes that long by itself, so none under
# load); the connectors, whose batch arrives nearly whole, linger only long enough for the
# fetches that bring the rest of it; the confirmer long enough to gather the acks of one intake
# batch from every connector (issue #15; README, Performance).
INTAKE_BATCH_LINGER_MS = 0
INTAKE_BATCH_INTERVAL_MS = 100
CONNECTOR_BATCH_LINGER_MS = 5
CONFIRMER_BATCH_LINGER_MS = 40
BATCH_LINGER_MS = 20  # any other consumer (the consume loop's default)


class PartnerEndpoint(BaseModel):
    """One third party told not to sell/share (``OPTOUT_PARTNERS`` is a JSON list of these)."""

    model_config = {"frozen": True}

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str = Field(description="Base URL; the connector POSTs to <url>/opt-outs.")
    token: SecretStr


def _default_partners() -> list[PartnerEndpoint]:
    return [
        PartnerEndpoint(
            name=name, url=f"http://127.0.0.1:18082/partners/{name}", token=SecretStr(f"dev-{name}-token")
        )
        for name in ("adnetwork", "databroker")
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPTOUT_", env_file=".env", extra="ignore", frozen=True)

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers.")
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256, ...")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_ca_location: str | None = Field(None, description="CA certificate file for SSL / SASL_SSL.")
    kafka_extra: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "More librdkafka settings as a JSON object, passed through to every client; "
            'with "debug" (e.g. {"debug": "cgrp,topic,fetch"}) librdkafka\'s debug lines go to stderr.'
        ),
    )
    kafka_consumer_queue_kbytes: int = Field(
        8192,
        ge=1,
        le=2_097_151,
        description="Most KiB of messages a consumer fetches ahead of what it has processed "
        "(librdkafka queued.max.messages.kbytes; its default, 64 MiB, fills up only behind a "
        "backlog and makes resident memory grow with it). A batch of OPTOUT_BATCH_SIZE "
        "messages needs about a tenth of the default.",
    )
    kafka_consumer_queue_messages: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Most messages a consumer fetches ahead of what it has processed, plus one "
        "fetch (librdkafka queued.min.messages; its default, 100,000, fills up behind a backlog). "
        "For small messages (the confirmer's acks, about 100 bytes) this binds before "
        "OPTOUT_KAFKA_CONSUMER_QUEUE_KBYTES: librdkafka keeps about 750 bytes of its own per "
        "queued message, so 100,000 acks held about 75 MiB. Two batches of OPTOUT_BATCH_SIZE.",
    )
    kafka_fetch_wait_ms: int = Field(
        50,
        ge=1,
        le=60_000,
        description="Longest the broker holds a consumer's fetch while fewer than "
        "OPTOUT_KAFKA_FETCH_MIN_BYTES are there (librdkafka fetch.wait.max.ms): how often an "
        "idle consumer asks, and with a high minimum the window each fetch gathers.",
    )
    kafka_fetch_min_bytes: int = Field(
        1,
        ge=1,
        le=100_000_000,
        description="Bytes the broker waits for before answering a fetch (librdkafka "
        "fetch.min.bytes). 1: every message is fetched as soon as it is written (a busy "
        "consumer sends many small fetches); higher: one fetch per OPTOUT_KAFKA_FETCH_WAIT_MS "
        "at low rates (fewer requests for the broker, each message waiting up to that long, also "
        "under load; README, Performance). Keep it at or below 262,144 (one partition's fetch), "
        "or a consumer of one partition waits out every window behind a backlog.",
    )
    kafka_request_log_seconds: float = Field(
        0,
        ge=0,
        le=3600,
        description="Above 0: every Kafka client logs the requests it has sent to the brokers, by "
        "type (Produce, Fetch, ...; librdkafka statistics), every this many seconds (bench-e2e "
        "counts requests per opt-out from them). 0: off.",
    )
    topic_prefix: str = Field("", description="Prepended to every topic name (isolation).")
    destinations_file: Path | None = Field(
        None,
        description="The destinations file (TOML; docs/destinations.md); unset: "
        "deploy/destinations.toml (email_provider, mail_house, third_party_sharing).",
    )
    topic_partitions: int = Field(
        6, ge=1, le=1000, description="Partitions per topic created by `optout topics create`."
    )
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication factor of created topics (3 on a production cluster)."
    )
    topic_min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of created topics: an acks=all write needs this many "
        "in-sync copies (2 with replication factor 3); unset: the broker's default.",
    )
    pii_topic_retention_hours: int = Field(
        168,
        ge=1,
        le=87_600,
        description="retention.ms (in hours) of the topics that carry raw contact details "
        "(requests, confirmations, raw-identifier command topics, every DLQ); "
        "`optout topics create` applies it to new and existing topics.",
    )

    # --- PostgreSQL ------------------------------------------------------------
    database_url: SecretStr = Field(
        SecretStr("postgresql://optout_app:app-secret@127.0.0.1:15432/optout"),
        description="The services' own role: reads and writes tables, no DDL.",
    )
    admin_database_url: SecretStr | None = Field(
        None, description="Role that runs migrations (DDL). Defaults to database_url."
    )
    database_app_role: str = Field("optout_app", description="Role migrations grant DML to.")
    database_prepared_statements: bool = Field(
        True,
        description="Let psycopg prepare a statement on the server after 5 runs on one connection; "
        "false behind PgBouncer older than 1.21 in transaction pooling (the next transaction "
        "may run on a server connection without it).",
    )

    # --- Processing ------------------------------------------------------------
    batch_size: int = Field(5000, ge=1, le=100_000, description="Messages consumed per batch.")
    batch_timeout_ms: int = Field(
        100,
        ge=1,
        description="Longest wait for the first message of a batch; an idle service does its "
        "periodic work (the confirmer's sweep, a connector's settle) this often.",
    )
    batch_linger_ms: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Once a batch's first message is in, wait at most this long for more (up to "
        "OPTOUT_BATCH_SIZE); 0 takes what is fetched already. Higher: fewer, larger batches "
        "(less CPU per message), each message waiting up to this long more per service. Unset: "
        f"each service's own, intake {INTAKE_BATCH_LINGER_MS} ms (see OPTOUT_BATCH_INTERVAL_MS), "
        f"the connectors {CONNECTOR_BATCH_LINGER_MS} ms, the confirmer "
        f"{CONFIRMER_BATCH_LINGER_MS} ms; set, it applies to every service of the process.",
    )
    batch_interval_ms: int | None = Field(
        None,
        ge=0,
        le=60_000,
        description="A service starts a batch at most this often: once a batch's first message is "
        "in, it waits until this long after the previous batch started, then takes what came "
        "(nothing once a batch takes that long by itself, as under load). Unset: intake "
        f"{INTAKE_BATCH_INTERVAL_MS} ms (its batches set every downstream service's), every other "
        "service 0 (none); set, it applies to every service of the process.",
    )
    commit_interval_ms: int = Field(
        1000,
        ge=0,
        le=60_000,
        description="How often consumed offsets are committed. A batch's offsets are stored only "
        "once its work is durable; committed every this many ms, on a rebalance and on stop (a "
        "crash re-processes at most this long's messages, idempotently). 0: a synchronous "
        "commit after every batch (one more broker round trip per batch).",
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=10_000, description="librdkafka max.poll.interval.ms; /healthz fails before it."
    )
    clock_skew_seconds: int = Field(300, ge=0, description="Allowed future requested_at.")
    default_phone_region: str = Field(
        "US",
        min_length=2,
        max_length=2,
        description="Region for phone numbers without a country code (ISO 3166-1).",
    )
    retry_max_backoff_seconds: float = Field(
        30.0, gt=0, description="Longest backoff between retries of a failing batch."
    )
    intake_database_connections: int = Field(
        3, ge=1, le=16, description="Database connections intake writes chunks on in parallel."
    )
    retention_days: int = Field(
        90,
        ge=0,
        description="`optout purge` removes raw contact details of requests confirmed longer ago than this.",
    )
    intake_pipeline_chunk: int = Field(
        1000,
        ge=1,
        description="Intake writes a batch in chunks of this many, overlapping "
        "database writes with decoding the next chunk.",
    )

    # --- Confirmer -------------------------------------------------------------
    sweep_interval_seconds: float = Field(
        30.0, gt=0, description="How often the confirmer's deadline sweeper runs."
    )
    reissue_base_seconds: float = Field(
        900.0, gt=0, description="Re-send an unacknowledged command after this long; doubles per send."
    )
    reissue_cap_seconds: float = Field(
        21_600.0, gt=0, description="Longest wait between re-sends of one command."
    )
    sweep_batch_size: int = Field(500, ge=1, le=100_000, description="Commands re-sent per sweep.")

    # --- Connectors ------------------------------------------------------------
    email_provider_url: str = Field("http://127.0.0.1:18081", description="Email provider API base URL.")
    email_provider_token: SecretStr = Field(SecretStr("dev-esp-token"), description="Its API token.")
    mail_house_dir: str = Field(".run/mail_house", description="Where the daily suppression CSVs go.")
    partners: list[PartnerEndpoint] = Field(
        default_factory=_default_partners,
        description='JSON list of {"name", "url", "token"}: third parties told not to sell/share.',
    )
    connector_retry_initial_seconds: float = Field(
        0.2, gt=0, description="First backoff before a connector's failed batch is retried."
    )
    connector_retry_max_backoff_seconds: float = Field(
        10.0, gt=0, description="Longest backoff before a connector's failed batch is retried."
    )
    connector_retry_after_max_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest provider Retry-After honoured (the consumer keeps polling meanwhile).",
    )
    connector_http_timeout_seconds: float = Field(30.0, gt=0, description="HTTP timeout of connector calls.")
    connector_credentials_check_seconds: float = Field(
        30.0,
        gt=0,
        description="While a destination refuses our credentials (401/403), try again this often.",
    )
    # Local stand-ins of the destination systems (`optout run standins`).
    standin_host: str = Field("127.0.0.1", description="Address the local stand-ins listen on.")
    standin_email_provider_port: int = Field(
        18081, ge=0, le=65535, description="Port of the email provider stand-in."
    )
    standin_partners_port: int = Field(18082, ge=0, le=65535, description="Port of the partners stand-in.")
    standin_webhook_partners_port: int = Field(
        18090, ge=0, le=65535, description="Port of the signed-webhook partners stand-in."
    )
    standin_webhook_secrets: dict[str, str] = Field(
        default_factory=lambda: {
            "adnetwork": "whsec_b3B0b3V0LURFVi1PTkxZLXdlYmhvb2sta2V5LWFkbmV0d29yaw==",
            "databroker": "whsec_b3B0b3V0LURFVi1PTkxZLXdlYmhvb2sta2V5LWRhdGFicm9rZXI=",
        },
        description="JSON {partner: 'whsec_... [whsec_...]'}: the webhook stand-in's partners and secrets.",
    )
    standin_sendgrid_port: int = Field(18091, ge=0, le=65535, description="Port of the SendGrid stand-in.")
    standin_sendgrid_api_key: str = Field(
        "dev-sendgrid-key", description="API key the SendGrid stand-in accepts (development only)."
    )
    standin_mailgun_port: int = Field(18092, ge=0, le=65535, description="Port of the Mailgun stand-in.")
    standin_mailgun_api_key: str = Field(
        "dev-mailgun-key", description="API key the Mailgun stand-in accepts (development only)."
    )
    standin_sftp_inbox: str = Field(
        "", description="The SFTP mail house's inbox on local disk, imported by its stand-in; empty: off."
    )
    standin_ses_port: int = Field(
        18086, ge=0, le=65535, description="Port of the Amazon SES (v2) emulator (moto server)."
    )
    standin_sms_port: int = Field(
        18096, ge=0, le=65535, description="Port of the AWS End User Messaging SMS (opt-out lists) stand-in."
    )
    standin_sms_access_key_id: str = Field(
        "dev-sms-key-id", description="AWS access key id the SMS stand-in accepts (development only)."
    )
    standin_sms_secret_access_key: str = Field(
        "dev-sms-secret",
        description="Its secret, checked in each request's SigV4 signature (development only).",
    )
    standin_failure_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered 503.")
    standin_rate_limit_per_second: int = Field(0, ge=0, description="Requests/s before 429; 0: none.")
    standin_retry_after_seconds: int = Field(
        1, ge=0, description="Retry-After the stand-in sends with a 429."
    )
    standin_rejected_emails: list[str] = Field(
        default_factory=list, description="Addresses the email provider stand-in refuses (JSON list)."
    )

    # --- Observability ---------------------------------------------------------
    log_format: str = Field(
        "auto",
        pattern="^(auto|json|console)$",
        description="auto (JSON unless stdout is a terminal), json or console.",
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    exporter_interval_seconds: float = Field(
        15.0, gt=0, description="How often `optout run exporter` samples lag and the business view."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="0 disables the HTTP endpoint.")

    # --- Web -------------------------------------------------------------------
    env: str = Field(
        "development",
        description="'production' refuses every dev-only default (dev secrets, loopback URLs, local paths).",
    )
    web_host: str = Field("127.0.0.1", description="Address the web service listens on.")
    web_port: int = Field(8080, ge=0, le=65535, description="Port the web service listens on.")
    web_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    web_public_url: str = Field(
        "http://127.0.0.1:8080", description="Base URL of unsubscribe links (https in production)."
    )
    web_token_keys: SecretStr = Field(
        # DEV ONLY: a well-known key; the web service and `optout link` refuse it when
        # OPTOUT_ENV=production. Generate real keys with `optout link --generate-key`.
        SecretStr('{"dev": "b3B0b3V0LWRldi1vbmx5LWtleS1OT1QtU0VDUkVUISE"}'),
        description='Token keys as JSON {"kid": "base64url 32-byte key"}; old kids keep verifying.',
    )
    web_current_kid: str = Field("dev", description="Key id new links are minted with.")
    web_token_ttl_days: int = Field(400, ge=0, description="Link lifetime; 0 = links never expire.")
    web_max_body_bytes: int = Field(8192, ge=256, le=1_048_576, description="Largest request body accepted.")
    web_rate_limit_per_second: float = Field(
        5.0, gt=0, description="Per client (IPv6: per /64), per instance; one-click POSTs per token."
    )
    web_rate_limit_burst: int = Field(
        30, ge=1, description="Requests a client may burst before the rate limit."
    )
    web_trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Proxies (JSON list of CIDRs) whose X-Forwarded-For names the client; "
        "empty: the TCP peer is the client.",
    )
    web_gpc_path: str = Field(
        "/gpc",
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        description="Path of the Global Privacy Control signal endpoint.",
    )
    web_gpc_last_update: date | None = Field(
        None,
        description="Date (YYYY-MM-DD) the site's GPC statement last changed: the lastUpdate "
        "member of /.well-known/gpc.json; empty leaves it out.",
    )
    web_publish_timeout_seconds: float = Field(
        5.0, gt=0, le=120, description="How long a POST waits for the broker before a 503."
    )
    web_resubscribe_record_wait_seconds: float = Field(
        5.0,
        ge=0,
        le=60,
        description="How long a resubscribe waits for intake to record the opt-in before it "
        "answers, so that an opt-out through the same link right after gets a new event id.",
    )
    web_device_cookie_secure: bool = Field(
        True,
        description="Mark the GPC device cookie Secure (named __Host-optout_device); false "
        "only for local http development (then optout_device). Production refuses false.",
    )
    web_device_cookie_days: int = Field(
        395, ge=1, le=400, description="Lifetime of the GPC device cookie (browsers cap it at 400 days)."
    )
    gpc_log_retention_days: int = Field(
        730,
        ge=0,
        description="`optout purge` deletes applied-GPC-signal log rows older than this "
        "(24 months: CCPA regulations section 7101).",
    )
    audit_retention_days: int = Field(
        730,
        ge=0,
        description="`optout purge` deletes audit trail events (audit_events) older than this, "
        "independently of the contact-details purge (24 months: CCPA regulations section 7101). "
        "The database refuses less than its floor (table audit_retention_floor, 730 days).",
    )

    # --- Inbound provider webhooks (`optout run inbound`, docs/inbound.md) --------------
    inbound_host: str = Field("127.0.0.1", description="Address the inbound webhook service listens on.")
    inbound_port: int = Field(
        8090, ge=0, le=65535, description="Port the inbound webhook service listens on."
    )
    inbound_public_url: str = Field(
        "http://127.0.0.1:8090",
        description="Base URL the providers post to (as they see it, behind proxies); Twilio "
        "signs the full URL, so it must match the URL configured at Twilio.",
    )
    inbound_max_body_bytes: int = Field(
        1_048_576, ge=1024, le=16_777_216, description="Largest webhook body accepted."
    )
    inbound_refusals_per_minute: float = Field(
        30.0,
        gt=0,
        le=60_000,
        description="Refused webhooks (bad or stale signature, replay, malformed, too large) "
        "allowed per client per minute once the burst is spent; beyond it the client gets 429 "
        "before any signature is checked. Accepted webhooks never count.",
    )
    inbound_refusal_burst: int = Field(
        20, ge=1, le=100_000, description="Refused webhooks a client may send at once."
    )
    inbound_trusted_proxies: list[str] = Field(
        [],
        description="CIDRs of proxies in front of the inbound service whose X-Forwarded-For "
        "names the client (as OPTOUT_WEB_TRUSTED_PROXIES); empty: the TCP peer is the client.",
    )
    inbound_max_age_seconds: int = Field(
        600,
        ge=1,
        le=86_400,
        description="Signed timestamps (SendGrid header, Mailgun signature) older than this "
        "are refused as stale (401); Mailgun tokens are remembered this long.",
    )
    inbound_sns_max_age_seconds: int = Field(
        3600,
        ge=1,
        le=1_209_600,
        description="SNS messages whose Timestamp (the publish time, kept on retries) is older "
        "than this are refused as stale (401).",
    )
    inbound_email_jurisdiction: str | None = Field(
        None, description="Jurisdiction of email-provider opt-outs; unset: none (the default deadline rules)."
    )
    inbound_sendgrid_public_key: str = Field(
        "",
        description="SendGrid signed Event Webhook verification key (base64 DER, as SendGrid "
        "shows it); empty: the SendGrid endpoint is off.",
    )
    inbound_mailgun_signing_key: SecretStr = Field(
        # DEV ONLY: refused when OPTOUT_ENV=production (a secret with a non-empty default).
        SecretStr("dev-mailgun-webhook-signing-key"),
        description="Mailgun HTTP webhook signing key (secret).",
    )
    inbound_sns_certificate: Path | None = Field(
        None,
        description="PEM file of the SNS signing certificate(s) to trust (downloaded once from "
        "SigningCertURL; never fetched at run time); unset: the SES/SNS endpoint is off.",
    )
    inbound_sns_topic_arns: list[str] = Field(
        default_factory=list,
        description="JSON list of the SNS topic ARNs accepted (required with the certificate).",
    )
    inbound_sns_confirm_subscriptions: bool = Field(
        False,
        description="Confirm SNS subscriptions by GET of the SubscribeURL; off: log and count the "
        "pending confirmation for an operator to confirm.",
    )
    inbound_twilio_auth_token: SecretStr = Field(
        # DEV ONLY: refused when OPTOUT_ENV=production (a secret with a non-empty default).
        SecretStr("dev-twilio-auth-token"),
        description="Twilio auth token that signs inbound SMS webhooks (secret).",
    )
    inbound_sms_jurisdiction: str | None = Field(
        None,
        description="Jurisdiction of SMS opt-outs; unset: the region of the sender's number "
        "(+1: US or CA by area code).",
    )
    inbound_sms_stop_reply: str = Field(
        "You are unsubscribed and will receive no more marketing texts from us. Reply START to resubscribe.",
        min_length=1,
        max_length=320,
        description="The one confirmation text sent after STOP (no marketing).",
    )
    inbound_sms_start_reply: str = Field(
        "You are resubscribed to our texts. Reply STOP to unsubscribe.",
        min_length=1,
        max_length=320,
        description="The reply to START.",
    )

    # --- Lookup API (`optout run lookup`, README "Asking before you send") ------------
    lookup_host: str = Field("127.0.0.1", description="Address the lookup API listens on.")
    lookup_port: int = Field(8095, ge=0, le=65535, description="Port the lookup API listens on.")
    lookup_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes of the lookup API.")
    lookup_api_keys: list[SecretStr] = Field(
        # DEV ONLY: a well-known key; production refuses it. Several keys are accepted at
        # once, so a key is rotated by adding the new one, moving callers, removing the old.
        default_factory=lambda: [SecretStr(DEV_LOOKUP_API_KEY)],
        description='API keys the lookup API accepts (JSON list of strings, e.g. ["k1", "k2"]; '
        "Authorization: Bearer KEY or X-API-Key: KEY).",
    )
    lookup_database_connections: int = Field(
        8, ge=1, le=256, description="PostgreSQL connections of each lookup API worker."
    )

    # --- Suppression list ------------------------------------------------------
    suppression_keys: SecretStr = Field(
        # DEV ONLY: a well-known key; the suppression list refuses it when OPTOUT_ENV=production.
        SecretStr(DEV_SUPPRESSION_KEYS),
        description='Suppression-list encryption keys as JSON {"kid": "base64url 32-byte key"}; '
        "old kids keep decrypting.",
    )
    suppression_current_kid: str = Field(
        "dev", description="Key id new suppression-list entries are encrypted with."
    )

    # --- Customer directory (identity enrichment) -----------------------------
    directory_enabled: bool = Field(
        True,
        description="Intake adds the customer directory's other emails, phones and addresses "
        "to each request (optout customers import).",
    )
    directory_check_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="While the customer directory is empty, how often intake looks again.",
    )

    # The destinations file, read and checked (credentials resolved) when the settings are
    # made, so a bad file stops every command at start-up.
    _destinations: Destinations = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._destinations = load_destinations(self.destinations_file)

    @property
    def destinations(self) -> Destinations:
        return self._destinations

    @field_validator("web_trusted_proxies", "inbound_trusted_proxies")
    @classmethod
    def _check_cidrs(cls, value: list[str]) -> list[str]:
        networks = []
        for item in value:
            try:
                networks.append(str(ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network in CIDR notation") from None
        return networks

    @field_validator("web_gpc_last_update", mode="before")
    @classmethod
    def _empty_date_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("topic_min_insync_replicas", "batch_linger_ms", "batch_interval_ms", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("topic_min_insync_replicas")
    @classmethod
    def _check_min_insync(cls, value: int | None, info: ValidationInfo) -> int | None:
        replication = info.data.get("topic_replication_factor")
        if value is not None and isinstance(replication, int) and value > replication:
            raise ValueError(
                f"{value} exceeds OPTOUT_TOPIC_REPLICATION_FACTOR ({replication}): every "
                "acks=all write would be refused"
            )
        return value

    @field_validator("kafka_extra", mode="before")
    @classmethod
    def _parse_extra(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    # --- Derived ---------------------------------------------------------------
    def kafka_config(self) -> dict[str, str | int | float | bool]:
        """The librdkafka settings common to every client (producer, consumer, admin)."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            config["ssl.ca.location"] = self.kafka_ssl_ca_location
        config.update(self.kafka_extra)
        return config

    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    def admin_dsn(self) -> str:
        return (self.admin_database_url or self.database_url).get_secret_value()

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def requests_topic(self) -> str:
        return self.topic("optout.requests")

    @property
    def requests_dlq_topic(self) -> str:
        return self.topic("optout.requests.dlq")

    @property
    def acks_topic(self) -> str:
        return self.topic("optout.acks")

    @property
    def acks_dlq_topic(self) -> str:
        return self.topic("optout.acks.dlq")

    @property
    def confirmations_topic(self) -> str:
        return self.topic("optout.confirmations")

    @property
    def suppressions_topic(self) -> str:
        """The compacted topic of the current suppression state per subject."""
        return self.topic("optout.suppressions")

    def suppress_topic(self, destination_id: str) -> str:
        return self.topic(f"optout.suppress.{destination_id}")

    def suppress_dlq_topic(self, destination_id: str) -> str:
        return self.topic(f"optout.suppress.{destination_id}.dlq")

    def all_topics(self) -> list[str]:
        return [
            self.requests_topic,
            self.requests_dlq_topic,
            *(self.suppress_topic(d.id) for d in self.destinations),
            *(self.suppress_dlq_topic(d.id) for d in self.destinations),
            self.acks_topic,
            self.acks_dlq_topic,
            self.confirmations_topic,
            self.suppressions_topic,
        ]

    def group(self, service: str) -> str:
        return f"{self.topic_prefix}optout.{service}"


# --- development values that production refuses ------------------------------------------------
# With OPTOUT_ENV=production, ``load_settings`` refuses each setting named here (and every
# SecretStr setting with a non-empty default) whose value is its local-stack default, holds
# one of DEV_SECRETS (as a whole word: a DSN password, a token, a key) or an http(s) URL on
# a loopback host. Adding a setting with a dev-only default: add its name here (a secret is
# covered already; add its dev value to DEV_SECRETS if it can hide inside other settings).
PRODUCTION_REFUSES_DEV_VALUES: tuple[str, ...] = (
    "kafka_bootstrap",
    "kafka_sasl_password",
    "database_url",
    "admin_database_url",
    "email_provider_url",
    "email_provider_token",
    "mail_house_dir",
    "partners",
    "web_public_url",
    "web_token_keys",
    "inbound_public_url",
    "suppression_keys",
    "lookup_api_keys",
)
DEV_SECRETS = frozenset(
    {
        "app-secret",  # the local stack's database passwords (services/devstack/config.py)
        "admin-secret",
        "optout-secret",  # the local broker's SASL password
        "dev-esp-token",
        "dev-adnetwork-token",
        "dev-databroker-token",
        "b3B0b3V0LWRldi1vbmx5LWtleS1OT1QtU0VDUkVUISE",  # the web's well-known dev token key
        "b3B0b3V0LURFVi1PTkxZLXN1cHByZXNzaW9uLWtleSE",  # the suppression list's well-known dev key
        "dev-mailgun-webhook-signing-key",  # the inbound service's dev Mailgun signing key
        "dev-twilio-auth-token",  # the inbound service's dev Twilio auth token
        "dev-lookup-api-key",  # the lookup API's well-known dev key (DEV_LOOKUP_API_KEY)
    }
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_WORD = re.compile(r"[A-Za-z0-9_-]+")
_URL = re.compile(r"https?://[^\s\"',]+", re.IGNORECASE)


def _texts(value: Any) -> Iterator[str]:
    """Every string inside a setting's value (secrets revealed, models and JSON walked)."""
    if isinstance(value, SecretStr):
        yield from _texts(value.get_secret_value())
    elif isinstance(value, str):
        yield value
    elif isinstance(value, BaseModel):
        yield from _texts(value.model_dump())
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _texts(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _texts(item)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _dev_like(value: Any) -> bool:
    """Does a value hold a well-known dev secret (as a whole word) or a loopback http(s) URL?"""
    for text in _texts(value):
        if DEV_SECRETS & set(_WORD.findall(text)):
            return True
        for url in _URL.findall(text):
            try:
                host = urlsplit(url).hostname
            except ValueError:
                continue
            if is_loopback_host(host):
                return True
    return False


def production_problems(cfg: Settings) -> list[str]:
    """``OPTOUT_*`` names of the settings that still hold a development value: those of
    PRODUCTION_REFUSES_DEV_VALUES, and every secret with a non-empty default (a secret's
    default is a dev secret by nature, so a new one is covered without being listed)."""
    values = cfg.model_dump()
    defaults = Settings.model_construct().model_dump()  # the declared defaults, no environment
    problems = []
    for name in Settings.model_fields:
        value, default = values[name], defaults[name]
        secret_default = isinstance(default, SecretStr) and bool(default.get_secret_value())
        if name not in PRODUCTION_REFUSES_DEV_VALUES and not secret_default:
            continue
        if (value is not None and value == default) or _dev_like(value):
            problems.append(f"OPTOUT_{name.upper()}")
    return problems


def check_production(cfg: Settings) -> None:
    """With OPTOUT_ENV=production, one ``ConfigurationError`` naming every dev-only value."""
    if cfg.env.lower() != "production":
        return
    problems = production_problems(cfg)
    if problems:
        raise ConfigurationError(
            "OPTOUT_ENV=production refuses development defaults (dev-only values, well-known dev "
            f"secrets, loopback URLs); set {', '.join(problems)}; see .env.example"
        )


def load_settings(**overrides: Any) -> Settings:
    """Read settings; turn validation errors into one clear ``ConfigurationError``, and refuse
    development defaults when OPTOUT_ENV=production (``check_production``)."""
    try:
        cfg = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "OPTOUT_" + "_".join(str(p) for p in first["loc"]).upper()
        raise ConfigurationError(f"setting {name} is invalid: {first['msg']}") from None
    except (SettingsError, json.JSONDecodeError) as exc:
        # pydantic-settings: a JSON-valued variable (OPTOUT_KAFKA_EXTRA, OPTOUT_PARTNERS, ...)
        # that is not JSON; its message names the field.
        match = re.search(r'field "(\w+)"', str(exc))
        name = f"OPTOUT_{match.group(1).upper()}" if match else "a JSON-valued setting"
        raise ConfigurationError(f"setting {name} is not valid JSON") from None
    check_production(cfg)
    return cfg


@lru_cache(maxsize=1)
def settings() -> Settings:
    return load_settings()
