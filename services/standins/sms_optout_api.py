"""Stand-in of AWS End User Messaging SMS (the ``pinpoint-sms-voice-v2`` API, service
``sms-voice``): the opt-out list calls the ``sms_optout_list`` connector makes, spoken over
the API's own protocol so that botocore is the client, unchanged.

moto (5.2) does not implement this API, so this is a small server of its documented shapes:

* Protocol: AWS JSON 1.0 (``awsJson1_0``): ``POST /`` with
  ``Content-Type: application/x-amz-json-1.0`` and ``X-Amz-Target: PinpointSMSVoiceV2.<Operation>``,
  a JSON body; errors are HTTP 400 (500 for ``InternalServerException``) with
  ``x-amzn-ErrorType: <Code>`` and a body ``{"__type": "<Code>", "Message": ..., <members>}``.
  https://smithy.io/2.0/aws/protocols/aws-json-1_0-protocol.html
* PutOptedOutNumber {OptOutListName, OptedOutNumber} -> {OptOutListArn, OptOutListName,
  OptedOutNumber, OptedOutTimestamp, EndUserOptedOut}
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_PutOptedOutNumber.html
* DeleteOptedOutNumber (same shapes; ``ResourceNotFoundException`` when the number is not on
  the list: "If the specified destination phone number doesn't exist ... an error is returned")
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_DeleteOptedOutNumber.html
* DescribeOptedOutNumbers {OptOutListName, OptedOutNumbers?, Filters?, NextToken?, MaxResults?}
  -> {OptOutListArn, OptOutListName, OptedOutNumbers: [OptedOutNumberInformation], NextToken?}
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_DescribeOptedOutNumbers.html
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_OptedOutNumberInformation.html
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_OptedOutFilter.html
* CreateOptOutList, DescribeOptOutLists (so a test or an operator can make and list lists)
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_CreateOptOutList.html
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_DescribeOptOutLists.html
* Error members: ``ValidationException`` {Message, Reason, Fields: [{Name, Message}]},
  ``ResourceNotFoundException`` {Message, ResourceType, ResourceId}, ``ThrottlingException``
  {Message}, ``ConflictException`` {Message, Reason, ResourceType, ResourceId},
  ``InternalServerException`` {Message, RequestId}
  https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/API_ValidationException.html
* Every request must carry a valid Signature Version 4 ``Authorization`` header (service
  ``sms-voice``), checked here as AWS computes it:
  https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
  Unknown access key: 403 ``InvalidClientTokenId``; wrong signature: 400
  ``InvalidSignatureException``; missing or malformed header: 400 ``IncompleteSignature``;
  ``X-Amz-Date`` more than 5 minutes off: 400 ``RequestExpired``
  (https://docs.aws.amazon.com/pinpoint/latest/apireference_smsvoicev2/CommonErrors.html).

Choices where the reference says nothing: the 30-day limit on deleting a number
(DeleteOptedOutNumber's page) is not enforced; DescribeOptedOutNumbers with
``OptedOutNumbers`` lists only the numbers that are on the list (the page says an *invalid*
number is an error; a valid number not on the list is left out). Knobs for tests:
``failure_rate`` (a share answered 500 ``InternalServerException``), ``rate_limit_per_second``
(then 400 ``ThrottlingException``), ``rejected`` numbers (400 ``ValidationException``
``FIELD_VALIDATION_FAILED`` naming ``OptedOutNumber``), ``set_keys`` to rotate the accepted
keys. ``GET /_standin/stats`` shows counters (no numbers). State is in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.standins.email_provider_api import FixedWindowLimiter
from services.standins.web import Request, Response

SERVICE = "sms-voice"
TARGET_PREFIX = "PinpointSMSVoiceV2."
JSON_10 = "application/x-amz-json-1.0"
STATS_PATH = "/_standin/stats"
ACCOUNT = "123456789012"
DEFAULT_LISTS = ("Default", "optout")
CLOCK_SKEW_SECONDS = 300
PHONE = re.compile(r"^\+?[1-9][0-9]{1,18}$")  # the API's PhoneNumber pattern
LIST_NAME_OR_ARN = re.compile(r"^[A-Za-z0-9_:/-]{1,256}$")
LIST_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CREDENTIAL = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request\s*,\s*"
    r"SignedHeaders=([a-z0-9;-]+)\s*,\s*Signature=([0-9a-f]{64})\s*$"
)


class ApiError(Exception):
    """One of the API's documented errors: HTTP ``status``, code ``code``, its members."""

    def __init__(self, code: str, message: str, status: int = 400, **members: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.members = members

    def response(self) -> Response:
        body = {"__type": self.code, "Message": self.message, **self.members}
        return Response(self.status, body, {"Content-Type": JSON_10, "x-amzn-ErrorType": self.code})


def validation(reason: str, message: str, fields: Iterable[tuple[str, str]] = ()) -> ApiError:
    return ApiError(
        "ValidationException",
        message,
        Reason=reason,
        Fields=[{"Name": name, "Message": text} for name, text in fields],
    )


# --- Signature Version 4 ----------------------------------------------------------------------
def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sigv4_signature(
    secret: str,
    request: Request,
    amz_date: str,
    scope_date: str,
    region: str,
    service: str,
    signed: list[str],
) -> str:
    """The signature AWS computes for ``request`` (the IAM user guide's four steps)."""
    headers = "".join(f"{name}:{' '.join(request.headers.get(name, '').split())}\n" for name in signed)
    query = "&".join(sorted(p for p in request.query.split("&") if p))
    canonical = "\n".join(
        [
            request.method,
            request.path or "/",
            query,
            headers,
            ";".join(signed),
            hashlib.sha256(request.body).hexdigest(),
        ]
    )
    scope = f"{scope_date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), scope_date), region), service), "aws4_request")
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass
class OptedOut:
    timestamp: float
    end_user: bool


class SmsOptOutStandin:
    """The app (``handle``) with its opt-out lists. Calls hold ``_lock``."""

    def __init__(
        self,
        keys: Mapping[str, str],
        region: str | None = None,
        failure_rate: float = 0.0,
        rate_limit_per_second: int = 0,
        rejected: Iterable[str] = (),
        lists: Iterable[str] = DEFAULT_LISTS,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``keys``: access key id -> secret accepted; ``region``: the only region accepted in
        a signature's scope (None: any, the scope's own)."""
        self.keys = dict(keys)
        self.region = region
        self.failure_rate = failure_rate
        self.rejected = {r.strip() for r in rejected}
        self.lists: dict[str, dict[str, OptedOut]] = {name: {} for name in lists}
        self.created: dict[str, float] = {name: wall_clock() for name in self.lists}
        self._rng = rng or random.Random()
        self._limiter = FixedWindowLimiter(rate_limit_per_second, monotonic)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self.answers: Counter[str] = Counter()  # "200", or the error code
        self.calls: Counter[str] = Counter()  # operation -> authenticated calls

    def set_keys(self, keys: Mapping[str, str]) -> None:
        with self._lock:
            self.keys = dict(keys)

    def set_limits(self, failure_rate: float, rate_limit_per_second: int) -> None:
        with self._lock:
            self.failure_rate = failure_rate
            self._limiter = FixedWindowLimiter(rate_limit_per_second)

    def opted_out(self, list_name: str = "optout") -> set[str]:
        with self._lock:
            return set(self.lists.get(list_name, {}))

    # --- the app ------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self._lock:
            if request.method == "GET" and request.path == STATS_PATH:
                return Response(200, self.stats())
            try:
                response = self._api(request)
            except ApiError as refused:
                response = refused.response()
                self.answers[refused.code] += 1
                return response
            self.answers[str(response.status)] += 1
            return response

    def _api(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/":
            raise ApiError("UnknownOperationException", "unknown operation", 404)
        region = self._authenticate(request)
        target = request.headers.get("x-amz-target", "")
        operation = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
        handler = self._operations().get(operation)
        if handler is None:
            raise ApiError("UnknownOperationException", f"unknown operation {target!r}", 400)
        self.calls[operation] += 1
        if self._limiter.admit() is not None:
            raise ApiError("ThrottlingException", "Rate exceeded")
        if self.failure_rate and self._rng.random() < self.failure_rate:
            raise ApiError("InternalServerException", "internal error", 500, RequestId=str(uuid.uuid4()))
        try:
            body = json.loads(request.body.decode("utf-8") or "{}")
        except ValueError:
            raise ApiError("SerializationException", "body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError("SerializationException", "body is not a JSON object")
        answer = handler(body, region)
        return Response(200, answer, {"Content-Type": JSON_10, "x-amzn-RequestId": str(uuid.uuid4())})

    def _operations(self) -> dict[str, Callable[[dict[str, Any], str], dict[str, Any]]]:
        return {
            "PutOptedOutNumber": self._put,
            "DeleteOptedOutNumber": self._delete,
            "DescribeOptedOutNumbers": self._describe_numbers,
            "CreateOptOutList": self._create_list,
            "DescribeOptOutLists": self._describe_lists,
        }

    def _authenticate(self, request: Request) -> str:
        """The region of a correctly signed request; else the documented error."""
        found = _CREDENTIAL.match(request.headers.get("authorization", ""))
        amz_date = request.headers.get("x-amz-date", "")
        if found is None or not re.fullmatch(r"\d{8}T\d{6}Z", amz_date):
            raise ApiError("IncompleteSignature", "Authorization header or X-Amz-Date missing or malformed")
        key_id, scope_date, region, service, signed_text, signature = found.groups()
        signed = signed_text.split(";")
        if key_id not in self.keys:
            raise ApiError(
                "InvalidClientTokenId", "The security token included in the request is invalid.", 403
            )
        if service != SERVICE or (self.region is not None and region != self.region):
            raise ApiError("InvalidSignatureException", f"Credential should be scoped to {SERVICE}")
        if "host" not in signed or not amz_date.startswith(scope_date):
            raise ApiError("IncompleteSignature", "host and x-amz-date must be signed")
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        if abs(self._wall_clock() - when) > CLOCK_SKEW_SECONDS:
            raise ApiError("RequestExpired", "Signature expired: X-Amz-Date is more than 5 minutes off")
        expected = sigv4_signature(self.keys[key_id], request, amz_date, scope_date, region, service, signed)
        if not hmac.compare_digest(expected, signature):
            raise ApiError(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method.",
            )
        return region

    # --- operations -------------------------------------------------------------------------
    def _arn(self, region: str, name: str) -> str:
        return f"arn:aws:sms-voice:{region}:{ACCOUNT}:opt-out-list/{name}"

    def _list(self, body: Mapping[str, Any], region: str) -> tuple[str, dict[str, OptedOut]]:
        given = body.get("OptOutListName")
        if not isinstance(given, str) or not LIST_NAME_OR_ARN.match(given):
            raise validation(
                "FIELD_VALIDATION_FAILED",
                "1 validation error detected",
                [("OptOutListName", "must match pattern [A-Za-z0-9_:/-]+, length 1 to 256")],
            )
        name = given.rsplit("/", 1)[-1] if given.startswith("arn:") else given
        if given.startswith("arn:") and given != self._arn(region, name):
            name = ""
        if name not in self.lists:
            raise ApiError(
                "ResourceNotFoundException",
                "The opt-out list could not be found.",
                ResourceType="opt-out-list",
                ResourceId=given,
            )
        return name, self.lists[name]

    def _number(self, value: object, field: str = "OptedOutNumber") -> str:
        if not isinstance(value, str) or len(value) > 20 or not PHONE.match(value):
            raise validation(
                "FIELD_VALIDATION_FAILED",
                "1 validation error detected",
                [(field, r"must match pattern \+?[1-9][0-9]{1,18}")],
            )
        if value in self.rejected:
            raise validation(
                "FIELD_VALIDATION_FAILED",
                "Invalid destination phone number",
                [(field, "is not a valid phone number")],
            )
        return value

    def _answer(self, region: str, name: str, number: str, entry: OptedOut) -> dict[str, Any]:
        return {
            "OptOutListArn": self._arn(region, name),
            "OptOutListName": name,
            "OptedOutNumber": number,
            "OptedOutTimestamp": entry.timestamp,
            "EndUserOptedOut": entry.end_user,
        }

    def _put(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        name, entries = self._list(body, region)
        number = self._number(body.get("OptedOutNumber"))
        entry = entries.setdefault(number, OptedOut(self._wall_clock(), end_user=False))
        return self._answer(region, name, number, entry)

    def _delete(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        name, entries = self._list(body, region)
        number = self._number(body.get("OptedOutNumber"))
        entry = entries.pop(number, None)
        if entry is None:
            raise ApiError(
                "ResourceNotFoundException",
                "The opted out number could not be found.",
                ResourceType="opted-out-number",
                ResourceId=number,
            )
        return self._answer(region, name, number, OptedOut(self._wall_clock(), entry.end_user))

    def _describe_numbers(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        name, entries = self._list(body, region)
        wanted = body.get("OptedOutNumbers")
        if wanted is not None:
            if not isinstance(wanted, list) or len(wanted) > 5:
                raise validation(
                    "FIELD_VALIDATION_FAILED", "at most 5", [("OptedOutNumbers", "0 to 5 items")]
                )
            numbers = [n for n in (self._number(w, "OptedOutNumbers") for w in wanted) if n in entries]
        else:
            numbers = sorted(entries)
        for wanted_filter in body.get("Filters") or []:
            if not isinstance(wanted_filter, dict) or wanted_filter.get("Name") != "end-user-opted-out":
                raise validation(
                    "INVALID_FILTER_VALUES", "unknown filter", [("Filters", "end-user-opted-out")]
                )
            values = {str(v).lower() for v in wanted_filter.get("Values") or []}
            numbers = [n for n in numbers if str(entries[n].end_user).lower() in values]
        start, size = self._page(body)
        page = numbers[start : start + size]
        answer: dict[str, Any] = {
            "OptOutListArn": self._arn(region, name),
            "OptOutListName": name,
            "OptedOutNumbers": [
                {
                    "OptedOutNumber": n,
                    "OptedOutTimestamp": entries[n].timestamp,
                    "EndUserOptedOut": entries[n].end_user,
                }
                for n in page
            ],
        }
        if start + size < len(numbers):
            answer["NextToken"] = str(start + size)
        return answer

    def _page(self, body: Mapping[str, Any]) -> tuple[int, int]:
        size = body.get("MaxResults", 100)
        token = body.get("NextToken")
        if not isinstance(size, int) or not 1 <= size <= 100:
            raise validation("FIELD_VALIDATION_FAILED", "MaxResults", [("MaxResults", "1 to 100")])
        if token is None:
            return 0, size
        if not isinstance(token, str) or not token.isdigit():
            raise validation("INVALID_NEXT_TOKEN", "The next token is invalid.")
        return int(token), size

    def _create_list(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        name = body.get("OptOutListName")
        if not isinstance(name, str) or not LIST_NAME.match(name):
            raise validation(
                "FIELD_VALIDATION_FAILED", "OptOutListName", [("OptOutListName", "[A-Za-z0-9_-]+")]
            )
        if name in self.lists:
            raise ApiError(
                "ConflictException",
                "The opt-out list already exists.",
                Reason="RESOURCE_ALREADY_EXISTS",
                ResourceType="opt-out-list",
                ResourceId=name,
            )
        self.lists[name] = {}
        self.created[name] = self._wall_clock()
        return {
            "OptOutListArn": self._arn(region, name),
            "OptOutListName": name,
            "Tags": [],
            "CreatedTimestamp": self.created[name],
        }

    def _describe_lists(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        names = body.get("OptOutListNames") or sorted(self.lists)
        missing = [n for n in names if n not in self.lists]
        if missing:
            raise ApiError(
                "ResourceNotFoundException",
                "The opt-out list could not be found.",
                ResourceType="opt-out-list",
                ResourceId=str(missing[0]),
            )
        start, size = self._page(body)
        answer: dict[str, Any] = {
            "OptOutLists": [
                {
                    "OptOutListArn": self._arn(region, n),
                    "OptOutListName": n,
                    "CreatedTimestamp": self.created[n],
                }
                for n in names[start : start + size]
            ]
        }
        if start + size < len(names):
            answer["NextToken"] = str(start + size)
        return answer

    def stats(self) -> dict[str, Any]:
        return {
            "answers": dict(sorted(self.answers.items())),
            "calls": dict(sorted(self.calls.items())),
            "opted_out": {name: len(entries) for name, entries in self.lists.items()},
        }
