"""sms_optout_list: SMS opt-outs land on an AWS End User Messaging SMS opt-out list.

AWS End User Messaging SMS (API ``pinpoint-sms-voice-v2``, signing name ``sms-voice``) does
not send to a number on the opt-out list linked to the sending phone number or pool
(https://docs.aws.amazon.com/sms-voice/latest/userguide/opt-out-list.html). A command with
``action`` OPT_OUT adds the person's E.164 number to the list, OPT_IN removes it.

Calls (AWS JSON 1.0, signed with SigV4 by botocore, never by hand):

* PutOptedOutNumber     https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_PutOptedOutNumber.html
  (OPT_OUT; the documented answer is the same whether or not the number was on the list
  already, so this kind answers APPLIED, never ALREADY_SUPPRESSED, for an opt-out)
* DeleteOptedOutNumber  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_DeleteOptedOutNumber.html
  (OPT_IN; ``ResourceNotFoundException`` for the *number* means it is not on the list:
  already in the state asked for, ALREADY_SUPPRESSED. "Each destination phone number can
  only be deleted once every 30 days": AWS's refusal is a REJECTED ack with its reason.)
* DescribeOptedOutNumbers https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_DescribeOptedOutNumbers.html
  (read-back for reconciliation: ``opted_out_numbers()`` pages with NextToken, ``is_opted_out``)

Errors (the operations' pages and
https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/CommonErrors.html):

* ``ThrottlingException`` (HTTP 400), 429: ``RetriableError`` after ``throttle_retry_seconds``
  (AWS sends no Retry-After; one is honoured if present).
* ``InternalServerException``, 5xx, ``ConflictException`` (concurrent operations on the same
  number), timeouts, connection errors: ``RetriableError``.
* ``AccessDeniedException`` (HTTP 400: no permission, or the account disabled),
  ``InvalidClientTokenId``, ``InvalidSignatureException``, ``UnrecognizedClientException``,
  ``IncompleteSignature``, ``RequestExpired``, ``ExpiredToken``, 401/403: ``CredentialsRefused``
  (the kit pauses the connector and alerts).
* ``ResourceNotFoundException`` for the opt-out list, and a ``ValidationException`` that is not
  about the phone number: ``SmsMisconfigured`` (a ``CredentialsRefused``: our configuration;
  pause and alert, reject nothing).
* ``ValidationException`` naming ``OptedOutNumber`` (or about the number: CANNOT_PARSE,
  PHONE_NUMBER_CANNOT_BE_OPTED_IN, ...): that command alone is REJECTED with the reason
  (digits redacted).

botocore's own retries are off: the kit retries, honouring ``retry_after``. Progress made
before a transient failure is kept (``IncompleteBatch``). Commands for the same number in one
batch run one after another in the batch's order; different numbers run on a small thread
pool (``concurrency``) sharing one botocore client (thread-safe; its connection pool holds
``concurrency`` keep-alive connections).

Rate: AWS gives every operation of this API a default requests-per-second quota, per account
and Region, that can be raised on request
(https://docs.aws.amazon.com/sms-voice/latest/userguide/quotas.html; DeleteOptedOutNumber: 10
a second by default). ``requests_per_second`` (0: no pacing) spaces this destination's calls
to stay under the account's quota instead of running into ``ThrottlingException``; calls
above it are answered ThrottlingException, which the kit retries after
``throttle_retry_seconds``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypedDict
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field

from services.common.contract import AckStatus, Action, Destination
from services.common.errors import ConfigurationError, RetriableError
from services.common.logging import get_logger
from services.common.settings import Settings, is_loopback_host
from services.connectors.aws import create_client, error_code, error_member, http_status, transient
from services.connectors.http import clean_reason
from services.connectors.kinds import OPTIONS_CONFIG, parse_options, require_credential
from services.connectors.kit import Command, Connector, CredentialsRefused, IncompleteBatch, Outcome

KIND = "sms_optout_list"
log = get_logger(__name__)

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
DESCRIBE_MAX_NUMBERS = 5  # DescribeOptedOutNumbers: OptedOutNumbers holds 0 to 5 numbers


class OptedOutNumberInformation(TypedDict, total=False):
    OptedOutNumber: str
    OptedOutTimestamp: datetime
    EndUserOptedOut: bool


class OptedOutNumberResult(TypedDict, total=False):
    """PutOptedOutNumber's and DeleteOptedOutNumber's answer."""

    OptOutListArn: str
    OptOutListName: str
    OptedOutNumber: str
    OptedOutTimestamp: datetime
    EndUserOptedOut: bool


class OptedOutNumbersPage(TypedDict, total=False):
    OptOutListArn: str
    OptOutListName: str
    OptedOutNumbers: list[OptedOutNumberInformation]
    NextToken: str


class SmsVoiceV2Client(Protocol):
    """The part of botocore's ``pinpoint-sms-voice-v2`` client this connector calls."""

    def put_opted_out_number(self, *, OptOutListName: str, OptedOutNumber: str) -> OptedOutNumberResult: ...

    def delete_opted_out_number(
        self, *, OptOutListName: str, OptedOutNumber: str
    ) -> OptedOutNumberResult: ...

    def describe_opted_out_numbers(
        self,
        *,
        OptOutListName: str,
        OptedOutNumbers: list[str] = ...,
        NextToken: str = ...,
        MaxResults: int = ...,
    ) -> OptedOutNumbersPage: ...

    def close(self) -> None: ...


class SmsOptOutListOptions(BaseModel):
    """An ``sms_optout_list`` destination's ``[settings]``."""

    model_config = OPTIONS_CONFIG

    region: str = Field(min_length=1)
    opt_out_list_name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_:/-]+$")
    endpoint_url: str | None = None
    timeout: float = Field(10.0, gt=0)
    concurrency: int = Field(4, ge=1, le=32)
    requests_per_second: float = Field(0.0, ge=0)  # 0: no pacing (see the module docstring)
    throttle_retry_seconds: float = Field(1.0, gt=0)
    credentials_retry_seconds: float = Field(60.0, gt=0)


class SmsMisconfigured(CredentialsRefused):
    """AWS says our configuration is wrong (no such opt-out list, a refused list name): the
    connector pauses and alerts like refused credentials; nothing is rejected."""


# --- error mapping (pure) ----------------------------------------------------------------------
THROTTLING = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
TRANSIENT = frozenset(
    {
        "InternalServerException",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "ConflictException",
    }
)
REFUSED = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "RequestExpired",
        "ExpiredToken",
        "ExpiredTokenException",
        "NotAuthorized",
    }
)
# ValidationException reasons (API_ValidationException.html) that are about the number itself.
NUMBER_REASONS = frozenset(
    {
        "CANNOT_PARSE",
        "CANNOT_ADD_OPTED_OUT_NUMBER",
        "PHONE_NUMBER_CANNOT_BE_OPTED_IN",
        "COUNTRY_CODE_MISMATCH",
        "DESTINATION_COUNTRY_BLOCKED",
    }
)
_DIGITS = re.compile(r"\+?\d[\d ()-]{5,}\d")


@dataclass(frozen=True)
class Refusal:
    """AWS refused this number for good: REJECTED with ``reason`` (no digits in it)."""

    reason: str


def pii_free(text: str) -> str:
    """AWS's message without a phone number it may quote."""
    return clean_reason(_DIGITS.sub("<number>", text))


def about_the_number(error: ClientError) -> bool:
    """Is this ValidationException about the phone number (not our list name or a bug)?"""
    if str(error_member(error, "Reason") or "") in NUMBER_REASONS:
        return True
    fields = error_member(error, "Fields")
    if isinstance(fields, list):
        return any(
            isinstance(f, dict) and f.get("Name") in ("OptedOutNumber", "OptedOutNumbers") for f in fields
        )
    return False


def number_not_on_list(error: ClientError) -> bool:
    """``ResourceNotFoundException`` for the number (not for the opt-out list)."""
    return error_code(error) == "ResourceNotFoundException" and error_member(error, "ResourceType") in (
        "opted-out-number",
        "phone-number",
    )


def classify(
    error: ClientError | BotoCoreError, operation: str, options: SmsOptOutListOptions
) -> RetriableError | Refusal:
    """What one failed call means: retry later (``RetriableError``, ``CredentialsRefused``,
    ``SmsMisconfigured``) or a refusal of this number alone."""
    retry = transient(
        error,
        f"SMS {operation}",
        throttling=THROTTLING,
        transient_codes=TRANSIENT,
        throttle_retry_seconds=options.throttle_retry_seconds,
    )
    if retry is not None or not isinstance(error, ClientError):
        return retry or RetriableError(f"SMS {operation}: {type(error).__name__}")
    code, status = error_code(error), http_status(error)
    message = str(error.response.get("Error", {}).get("Message") or "")
    if status in (401, 403) or code in REFUSED:
        reason = error_member(error, "Reason")
        return CredentialsRefused(
            f"AWS End User Messaging SMS refused our credentials on {operation} ({code or status}"
            f"{'' if not reason else f': {reason}'}); check the access key, secret and the IAM policy "
            "(sms-voice:PutOptedOutNumber, sms-voice:DeleteOptedOutNumber, "
            "sms-voice:DescribeOptedOutNumbers)",
            retry_after=options.credentials_retry_seconds,
        )
    if code == "ResourceNotFoundException":
        return SmsMisconfigured(
            f"SMS {operation}: opt-out list {options.opt_out_list_name!r} not found in {options.region} "
            f"({error_member(error, 'ResourceType') or 'resource'})",
            retry_after=options.credentials_retry_seconds,
        )
    if code == "ValidationException" and about_the_number(error):
        reason = error_member(error, "Reason")
        return Refusal(pii_free(f"SMS {operation}: {code}{f' ({reason})' if reason else ''}: {message}"))
    return SmsMisconfigured(
        f"SMS {operation} refused our request: {code or status}: {pii_free(message)}",
        retry_after=options.credentials_retry_seconds,
    )


# --- pacing ---------------------------------------------------------------------------------------
class Pacer:
    """Spaces calls ``1 / rate`` seconds apart across threads (0: no pacing): each ``wait``
    takes the next free slot, then sleeps until it comes."""

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._monotonic = monotonic
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


# --- the connector --------------------------------------------------------------------------------
class SmsOptOutListConnector(Connector):
    def __init__(self, destination: str, options: SmsOptOutListOptions, client: SmsVoiceV2Client) -> None:
        self.destination = destination
        self.options = options
        self.client = client
        self._pool = ThreadPoolExecutor(
            max(1, options.concurrency - 1), thread_name_prefix=f"sms-{destination}"
        )
        self._pacer = Pacer(options.requests_per_second)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    # --- apply ---------------------------------------------------------------------------------
    def apply(self, commands: Sequence[Command]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        by_number: dict[str, list[Command]] = {}
        for command in commands:
            if not command.phone:
                outcomes.append(Outcome.rejected(command.command_id, "command carries no phone number"))
            elif not E164.match(command.phone):
                outcomes.append(Outcome.rejected(command.command_id, "phone number is not in E.164 format"))
            else:
                by_number.setdefault(command.phone, []).append(command)
        failures: list[RetriableError] = []
        for done, failure in self._apply_numbers(list(by_number.values())):
            outcomes.extend(done)
            if failure is not None:
                failures.append(failure)
        if not failures:
            return outcomes
        # Credentials or configuration first: that is what the kit must pause and alert on.
        cause = next((f for f in failures if isinstance(f, CredentialsRefused)), failures[0])
        if not isinstance(cause, CredentialsRefused):  # refusals: CredentialsWatch logs once
            log.warning(
                "SMS opt-out list calls failed",
                destination=self.destination,
                failed=len(failures),
                error=str(cause),
            )
        if not outcomes:
            raise cause
        raise IncompleteBatch(outcomes, cause) from cause

    def _apply_numbers(
        self, numbers: list[list[Command]]
    ) -> list[tuple[list[Outcome], RetriableError | None]]:
        """Each number's commands (``_apply_number``), ``concurrency`` numbers at a time, the
        results in ``numbers``' order. At most ``concurrency`` tasks go to the pool, each
        taking the next number until none is left: a batch of thousands of numbers (behind a
        backlog) does not queue one Future per number."""
        results: list[tuple[list[Outcome], RetriableError | None]] = [([], None)] * len(numbers)
        taken = iter(range(len(numbers)))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    index = next(taken, None)
                if index is None:
                    return
                results[index] = self._apply_number(numbers[index])

        # The calling thread is one of the ``concurrency`` workers (one thread hand-off fewer per
        # batch, none for a batch of one number: issue #15); all finish before this returns.
        helpers = [self._pool.submit(work) for _ in range(min(self.options.concurrency, len(numbers)) - 1)]
        try:
            work()
        finally:
            wait_all(helpers)
        for helper in helpers:
            helper.result()
        return results

    def _apply_number(self, commands: list[Command]) -> tuple[list[Outcome], RetriableError | None]:
        """One number's commands, in order; stops at the first transient failure."""
        outcomes: list[Outcome] = []
        for command in commands:
            result = self._apply_one(command)
            if isinstance(result, RetriableError):
                return outcomes, result
            if isinstance(result, Refusal):
                outcomes.append(Outcome.rejected(command.command_id, result.reason))
            else:
                status, detail = result
                outcomes.append(Outcome(command.command_id, status, detail))
        return outcomes, None

    def _apply_one(self, command: Command) -> tuple[AckStatus, str | None] | Refusal | RetriableError:
        phone = command.phone or ""
        name = self.options.opt_out_list_name
        operation = "PutOptedOutNumber" if command.action == Action.OPT_OUT else "DeleteOptedOutNumber"
        self._pacer.wait()
        try:
            if command.action == Action.OPT_OUT:
                self.client.put_opted_out_number(OptOutListName=name, OptedOutNumber=phone)
            else:
                self.client.delete_opted_out_number(OptOutListName=name, OptedOutNumber=phone)
            return AckStatus.APPLIED, None
        except ClientError as error:
            if operation == "DeleteOptedOutNumber" and number_not_on_list(error):
                return AckStatus.ALREADY_SUPPRESSED, "not on the opt-out list"
            return classify(error, operation, self.options)
        except BotoCoreError as error:
            return classify(error, operation, self.options)

    # --- read-back (reconciliation) --------------------------------------------------------------
    def is_opted_out(self, phone: str) -> bool:
        """Is ``phone`` on the opt-out list (DescribeOptedOutNumbers with that number)?
        Raises ``RetriableError`` / ``CredentialsRefused`` like ``apply``."""
        try:
            page = self.client.describe_opted_out_numbers(
                OptOutListName=self.options.opt_out_list_name, OptedOutNumbers=[phone]
            )
        except ClientError as error:
            if number_not_on_list(error):
                return False
            raise self._raisable(error, "DescribeOptedOutNumbers") from error
        except BotoCoreError as error:
            raise self._raisable(error, "DescribeOptedOutNumbers") from error
        return any(n.get("OptedOutNumber") == phone for n in page.get("OptedOutNumbers", []))

    def opted_out_numbers(self, page_size: int = 100) -> Iterator[str]:
        """Every number on the opt-out list (DescribeOptedOutNumbers, every page)."""
        token: str | None = None
        name = self.options.opt_out_list_name
        while True:
            try:
                if token is None:
                    page = self.client.describe_opted_out_numbers(OptOutListName=name, MaxResults=page_size)
                else:
                    page = self.client.describe_opted_out_numbers(
                        OptOutListName=name, MaxResults=page_size, NextToken=token
                    )
            except (ClientError, BotoCoreError) as error:
                raise self._raisable(error, "DescribeOptedOutNumbers") from error
            for entry in page.get("OptedOutNumbers", []):
                if "OptedOutNumber" in entry:
                    yield entry["OptedOutNumber"]
            token = page.get("NextToken")
            if not token:
                return

    def _raisable(self, error: ClientError | BotoCoreError, operation: str) -> RetriableError:
        found = classify(error, operation, self.options)
        return found if isinstance(found, RetriableError) else SmsMisconfigured(found.reason)


# --- the kind -------------------------------------------------------------------------------------
def make_client(
    options: SmsOptOutListOptions, access_key_id: str, secret_access_key: str, session_token: str | None
) -> SmsVoiceV2Client:
    """A botocore ``pinpoint-sms-voice-v2`` client with exactly these credentials (the default
    AWS chain is never consulted) and no retries of its own (the kit retries)."""
    client: SmsVoiceV2Client = create_client(
        "pinpoint-sms-voice-v2",
        region=options.region,
        endpoint_url=options.endpoint_url,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        timeout=options.timeout,
        concurrency=options.concurrency,
    )
    return client


def _credentials(
    destination: Destination, options: SmsOptOutListOptions, settings: Settings
) -> tuple[str, str]:
    """The destination's ``access_key_id`` and ``secret_access_key``. A destination on a
    loopback endpoint (the local stand-in, as in the shipped default file) that names none
    gets the key the stand-in accepts (OPTOUT_STANDIN_SMS_*); production refuses a loopback
    endpoint."""
    local = is_loopback_host(urlsplit(options.endpoint_url or "").hostname)
    if local and settings.env.lower() == "production":
        raise ConfigurationError(
            f"destination {destination.id!r} ({destination.kind}): settings.endpoint_url is the local "
            "stand-in; OPTOUT_ENV=production needs AWS (drop endpoint_url) and real credentials"
        )
    given = destination.credentials
    if local and not given.get("access_key_id") and not given.get("secret_access_key"):
        return settings.standin_sms_access_key_id, settings.standin_sms_secret_access_key
    return (
        require_credential(destination, "access_key_id").get_secret_value(),
        require_credential(destination, "secret_access_key").get_secret_value(),
    )


def build(destination: Destination, settings: Settings) -> Connector:
    options = parse_options(SmsOptOutListOptions, destination)
    key_id, secret = _credentials(destination, options, settings)
    token = destination.credentials.get("session_token")
    session_token = token.get_secret_value() if token is not None and token.get_secret_value() else None
    return SmsOptOutListConnector(
        destination.id, options, make_client(options, key_id, secret, session_token)
    )
