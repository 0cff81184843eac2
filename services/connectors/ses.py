"""ses: opt-outs land on an Amazon SES (v2) contact list.

An opt-out is a contact on a contact list with ``UnsubscribeAll: true``, or, when the
destination's settings name a ``topic_name``, with that topic's preference ``OPT_OUT``
(``TopicPreferences: [{TopicName, SubscriptionStatus: OPT_OUT}]``). The account-level
suppression list is not used: it only takes the reasons BOUNCE and COMPLAINT
(https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_PutSuppressedDestination.html,
https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SuppressionOptions.html).

Calls (signed with SigV4 by botocore, never by hand):

* CreateContact  https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_CreateContact.html
  (400 ``AlreadyExistsException`` when the address is on the list already; then)
* GetContact     https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_GetContact.html
  (already opted out: ALREADY_SUPPRESSED, nothing written; else)
* UpdateContact  https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_UpdateContact.html
  ("You must specify all existing topic preferences ... otherwise, all your existing
  preferences will be removed": the update carries the contact's preferences and
  attributes read by GetContact, with ours added).
* ListContacts   https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_ListContacts.html
  (read-back for reconciliation, paged with NextToken; ``Filter`` per
  https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_ListContactsFilter.html
  filters by topic only, so ``UnsubscribeAll`` is checked on each contact here).

Opting back in (``action: OPT_IN``), mirroring the opt-out: GetContact; no contact means
nothing suppresses the address here (APPLIED, saying so); a contact already opted in is left
alone (APPLIED); else UpdateContact with ``UnsubscribeAll: false`` and, with a
``topic_name``, that topic's preference ``OPT_IN`` (the contact's other preferences and
attributes kept, as above). The contact is never deleted (DeleteContact would also lose
preferences the person set elsewhere).

SES has no batch call for contacts: one command is one to three calls, run on a small
thread pool (``concurrency``). Errors (https://docs.aws.amazon.com/ses/latest/APIReference-V2/CommonErrors.html):

* ``TooManyRequestsException`` / ``ThrottlingException`` / ``LimitExceededException``:
  ``RetriableError`` after the ``Retry-After`` header if SES sent one, else
  ``throttle_retry_seconds``.
* 5xx, ``ConcurrentModificationException``, timeouts, connection errors: ``RetriableError``.
* 401/403 (``AccessDenied*``, ``UnrecognizedClientException``, ``InvalidSignatureException``,
  ``SignatureDoesNotMatch``, ``InvalidClientTokenId``, ``ExpiredToken``...):
  ``CredentialsRefused`` (the kit pauses the connector and alerts).
* ``NotFoundException`` from CreateContact (the contact list does not exist in this
  account/region) and ``BadRequestException`` not about the address (e.g. an unknown
  topic): ``SesMisconfigured``, a ``CredentialsRefused``: our configuration, so the
  connector pauses and alerts the same way; nothing is rejected.
* ``BadRequestException`` about the address: that command alone is REJECTED, with SES's
  reason made PII-free.

botocore's own retries are off (``total_max_attempts: 1``): the kit retries, honouring
``retry_after``, while the consumer stays in its group. Progress made before a transient
failure is kept (``IncompleteBatch``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field

from services.common.contract import AckStatus, Destination
from services.common.errors import RetriableError
from services.common.logging import get_logger
from services.common.settings import Settings
from services.connectors.aws import create_client, error_code, http_status, transient
from services.connectors.http import clean_reason
from services.connectors.kinds import OPTIONS_CONFIG, parse_options, require_credential
from services.connectors.kit import Command, Connector, CredentialsRefused, IncompleteBatch, Outcome

KIND = "ses"
log = get_logger(__name__)

Status = Literal["OPT_IN", "OPT_OUT"]


class TopicPreference(TypedDict):
    TopicName: str
    SubscriptionStatus: Status


class ContactFilter(TypedDict, total=False):
    FilteredStatus: Status
    TopicFilter: Mapping[str, str | bool]


class ContactRecord(TypedDict, total=False):
    """GetContact's answer and ListContacts' ``Contacts`` entries (the fields we read)."""

    EmailAddress: str
    TopicPreferences: list[TopicPreference]
    UnsubscribeAll: bool
    AttributesData: str


class ContactPage(TypedDict, total=False):
    Contacts: list[ContactRecord]
    NextToken: str


class SesV2Client(Protocol):
    """The part of botocore's ``sesv2`` client this connector calls."""

    def create_contact(
        self,
        *,
        ContactListName: str,
        EmailAddress: str,
        TopicPreferences: list[TopicPreference] = ...,
        UnsubscribeAll: bool = ...,
    ) -> Mapping[str, object]: ...

    def update_contact(
        self,
        *,
        ContactListName: str,
        EmailAddress: str,
        TopicPreferences: list[TopicPreference] = ...,
        UnsubscribeAll: bool = ...,
        AttributesData: str = ...,
    ) -> Mapping[str, object]: ...

    def get_contact(self, *, ContactListName: str, EmailAddress: str) -> ContactRecord: ...

    def list_contacts(
        self, *, ContactListName: str, PageSize: int = ..., NextToken: str = ..., Filter: ContactFilter = ...
    ) -> ContactPage: ...

    def close(self) -> None: ...


class SesOptions(BaseModel):
    """A ``ses`` destination's ``[settings]``."""

    model_config = OPTIONS_CONFIG

    region: str = Field(min_length=1)
    contact_list_name: str = Field(min_length=1)
    topic_name: str | None = None
    endpoint_url: str | None = None
    timeout: float = Field(10.0, gt=0)
    concurrency: int = Field(4, ge=1, le=32)
    throttle_retry_seconds: float = Field(1.0, gt=0)
    credentials_retry_seconds: float = Field(60.0, gt=0)


class SesMisconfigured(CredentialsRefused):
    """SES says our configuration is wrong (no such contact list, no such topic): the
    connector pauses and alerts like refused credentials; nothing is rejected."""


# --- error mapping (pure) ----------------------------------------------------------------------
THROTTLING = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceededException"}
)
TRANSIENT = frozenset(
    {"ConcurrentModificationException", "InternalFailure", "ServiceUnavailable", "RequestTimeout"}
)
REFUSED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "MissingAuthenticationToken",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "NotAuthorized",
    }
)
_ADDRESS_WORDS = re.compile(r"e-?mail|address", re.IGNORECASE)
_EMAIL_LIKE = re.compile(r"[^\s'\"<>(),;:]+@[^\s'\"<>(),;:]+")


@dataclass(frozen=True)
class Refusal:
    """SES refused this address for good: REJECTED with ``reason`` (PII-free)."""

    reason: str


def pii_free(text: str) -> str:
    """SES's message without the address it may quote."""
    return clean_reason(_EMAIL_LIKE.sub("<address>", text))


def classify(
    error: ClientError | BotoCoreError, operation: str, options: SesOptions
) -> RetriableError | Refusal:
    """What one failed call means: retry later (``RetriableError``, ``CredentialsRefused``,
    ``SesMisconfigured``) or a refusal of this address alone."""
    retry = transient(
        error,
        f"SES {operation}",
        throttling=THROTTLING,
        transient_codes=TRANSIENT,
        throttle_retry_seconds=options.throttle_retry_seconds,
    )
    if retry is not None or not isinstance(error, ClientError):
        return retry or RetriableError(f"SES {operation}: {type(error).__name__}")
    code, status = error_code(error), http_status(error)
    message = str(error.response.get("Error", {}).get("Message") or "")
    if status in (401, 403) or code in REFUSED:
        return CredentialsRefused(
            f"SES refused our credentials on {operation} ({code or status}); "
            "check the access key, secret and the IAM policy (ses:CreateContact, "
            "ses:UpdateContact, ses:GetContact, ses:ListContacts)",
            retry_after=options.credentials_retry_seconds,
        )
    if code == "NotFoundException":
        return SesMisconfigured(
            f"SES {operation}: contact list {options.contact_list_name!r} not found in "
            f"{options.region} ({pii_free(message)})",
            retry_after=options.credentials_retry_seconds,
        )
    if code == "BadRequestException" and _ADDRESS_WORDS.search(message):
        return Refusal(pii_free(f"SES {operation}: {code}: {message}"))
    return SesMisconfigured(
        f"SES {operation} refused our request: {code or status}: {pii_free(message)}",
        retry_after=options.credentials_retry_seconds,
    )


# --- the connector --------------------------------------------------------------------------------
class SesConnector(Connector):
    def __init__(self, destination: str, options: SesOptions, client: SesV2Client) -> None:
        self.destination = destination
        self.options = options
        self.client = client
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix=f"ses-{destination}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    # --- what an opt-out is -------------------------------------------------------------------
    def _opt_out(self) -> TopicPreference | None:
        topic = self.options.topic_name
        return None if topic is None else TopicPreference(TopicName=topic, SubscriptionStatus="OPT_OUT")

    def opted_out(self, contact: ContactRecord) -> bool:
        """Does ``contact`` already say what an opt-out says here?"""
        if contact.get("UnsubscribeAll"):
            return True
        wanted = self._opt_out()
        return wanted is not None and wanted in contact.get("TopicPreferences", [])

    # --- apply ---------------------------------------------------------------------------------
    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        sendable: list[Command] = []
        for command in commands:
            if command.email:
                sendable.append(command)
            else:
                outcomes.append(Outcome.rejected(command.command_id, "command carries no email address"))
        failures: list[RetriableError] = []
        for command, result in zip(sendable, self._pool.map(self._one, sendable), strict=True):
            if isinstance(result, RetriableError):
                failures.append(result)
            elif isinstance(result, Refusal):
                outcomes.append(Outcome.rejected(command.command_id, result.reason))
            elif isinstance(result, tuple):
                outcomes.append(Outcome(command.command_id, *result))
            else:
                outcomes.append(Outcome(command.command_id, result))
        if not failures:
            return outcomes
        # Credentials or configuration first: that is what the kit must pause and alert on.
        cause = next((f for f in failures if isinstance(f, CredentialsRefused)), failures[0])
        log.warning("SES calls failed", destination=self.destination, failed=len(failures), error=str(cause))
        if not outcomes:
            raise cause
        raise IncompleteBatch(outcomes, cause) from cause

    def _one(self, command: Command) -> AckStatus | tuple[AckStatus, str] | Refusal | RetriableError:
        email = command.email or ""
        return self._opt_in_one(email) if command.opt_in else self._apply_one(email)

    def _opt_in_one(self, email: str) -> AckStatus | tuple[AckStatus, str] | Refusal | RetriableError:
        """One address opts back in: clear what an opt-out set, if the contact exists."""
        operation = "GetContact"
        topic = self.options.topic_name
        try:
            try:
                contact = self.client.get_contact(
                    ContactListName=self.options.contact_list_name, EmailAddress=email
                )
            except ClientError as missing:
                if error_code(missing) != "NotFoundException":
                    raise
                return (AckStatus.APPLIED, "no contact on the list: nothing suppresses it here")
            preferences = contact.get("TopicPreferences", [])
            opted_out_topic = topic is not None and any(
                p["TopicName"] == topic and p["SubscriptionStatus"] == "OPT_OUT" for p in preferences
            )
            if not contact.get("UnsubscribeAll") and not opted_out_topic:
                return (AckStatus.APPLIED, "the contact was not opted out")
            operation = "UpdateContact"
            opt_in = None if topic is None else TopicPreference(TopicName=topic, SubscriptionStatus="OPT_IN")
            self._update(email, contact, opt_in, unsubscribe_all=False)
            return AckStatus.APPLIED
        except (ClientError, BotoCoreError) as error:
            return classify(error, operation, self.options)

    def _apply_one(self, email: str) -> AckStatus | Refusal | RetriableError:
        """One address: create the contact opted out, or update it when it exists."""
        operation = "CreateContact"
        opt_out = self._opt_out()
        try:
            try:
                if opt_out is None:
                    self.client.create_contact(
                        ContactListName=self.options.contact_list_name,
                        EmailAddress=email,
                        UnsubscribeAll=True,
                    )
                else:
                    self.client.create_contact(
                        ContactListName=self.options.contact_list_name,
                        EmailAddress=email,
                        TopicPreferences=[opt_out],
                    )
                return AckStatus.APPLIED
            except ClientError as exists:
                if error_code(exists) != "AlreadyExistsException":
                    raise
            operation = "GetContact"
            contact = self.client.get_contact(
                ContactListName=self.options.contact_list_name, EmailAddress=email
            )
            if self.opted_out(contact):
                return AckStatus.ALREADY_SUPPRESSED
            operation = "UpdateContact"
            self._update(email, contact, opt_out)
            return AckStatus.APPLIED
        except (ClientError, BotoCoreError) as error:
            vanished = isinstance(error, ClientError) and error_code(error) == "NotFoundException"
            if vanished and operation != "CreateContact":  # deleted meanwhile: created next time
                return RetriableError(f"SES {operation}: contact vanished while updating")
            return classify(error, operation, self.options)

    def _update(
        self,
        email: str,
        contact: ContactRecord,
        opt_out: TopicPreference | None,
        unsubscribe_all: bool | None = None,
    ) -> None:
        """UpdateContact replaces every preference: send the contact's own, with ours
        (``opt_out``: the preference to set; ``unsubscribe_all``: None for an opt-out's rule)."""
        preferences = [
            p
            for p in contact.get("TopicPreferences", [])
            if opt_out is None or p["TopicName"] != opt_out["TopicName"]
        ]
        if opt_out is not None:
            preferences.append(opt_out)
        attributes = contact.get("AttributesData")
        everything = (
            unsubscribe_all
            if unsubscribe_all is not None
            else opt_out is None or bool(contact.get("UnsubscribeAll"))
        )
        if attributes is None:
            self.client.update_contact(
                ContactListName=self.options.contact_list_name,
                EmailAddress=email,
                TopicPreferences=preferences,
                UnsubscribeAll=everything,
            )
        else:
            self.client.update_contact(
                ContactListName=self.options.contact_list_name,
                EmailAddress=email,
                TopicPreferences=preferences,
                UnsubscribeAll=everything,
                AttributesData=attributes,
            )

    # --- read-back (reconciliation) --------------------------------------------------------------
    def contact(self, email: str) -> ContactRecord | None:
        """The contact as SES has it (GetContact), None when it is not on the list.
        Raises ``RetriableError`` / ``CredentialsRefused`` like ``apply``."""
        try:
            return self.client.get_contact(ContactListName=self.options.contact_list_name, EmailAddress=email)
        except ClientError as error:
            if error_code(error) == "NotFoundException":  # (also for a missing list: apply says so)
                return None
            raise self._raisable(error, "GetContact") from error
        except BotoCoreError as error:
            raise self._raisable(error, "GetContact") from error

    def opted_out_addresses(self, page_size: int = 100) -> Iterator[str]:
        """Every address on the list that is opted out here (ListContacts, every page)."""
        token: str | None = None
        while True:
            try:
                page = self._list_page(page_size, token)
            except (ClientError, BotoCoreError) as error:
                raise self._raisable(error, "ListContacts") from error
            for contact in page.get("Contacts", []):
                if self.opted_out(contact) and "EmailAddress" in contact:
                    yield contact["EmailAddress"]
            token = page.get("NextToken")
            if not token:
                return

    def _list_page(self, page_size: int, token: str | None) -> ContactPage:
        name = self.options.contact_list_name
        topic = self.options.topic_name
        if topic is None:  # SES filters by topic only; UnsubscribeAll is checked here
            if token is None:
                return self.client.list_contacts(ContactListName=name, PageSize=page_size)
            return self.client.list_contacts(ContactListName=name, PageSize=page_size, NextToken=token)
        wanted = ContactFilter(FilteredStatus="OPT_OUT", TopicFilter={"TopicName": topic})
        if token is None:
            return self.client.list_contacts(ContactListName=name, PageSize=page_size, Filter=wanted)
        return self.client.list_contacts(
            ContactListName=name, PageSize=page_size, NextToken=token, Filter=wanted
        )

    def _raisable(self, error: ClientError | BotoCoreError, operation: str) -> RetriableError:
        found = classify(error, operation, self.options)
        return found if isinstance(found, RetriableError) else SesMisconfigured(found.reason)


# --- the kind -------------------------------------------------------------------------------------
def make_client(
    options: SesOptions, access_key_id: str, secret_access_key: str, session_token: str | None
) -> SesV2Client:
    """A botocore ``sesv2`` client with exactly these credentials (the default AWS chain
    is never consulted) and no retries of its own (the kit retries)."""
    client: SesV2Client = create_client(
        "sesv2",
        region=options.region,
        endpoint_url=options.endpoint_url,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        timeout=options.timeout,
        concurrency=options.concurrency,
    )
    return client


def build(destination: Destination, settings: Settings) -> Connector:
    options = parse_options(SesOptions, destination)
    key_id = require_credential(destination, "access_key_id").get_secret_value()
    secret = require_credential(destination, "secret_access_key").get_secret_value()
    token = destination.credentials.get("session_token")
    session_token = token.get_secret_value() if token is not None and token.get_secret_value() else None
    return SesConnector(destination.id, options, make_client(options, key_id, secret, session_token))
