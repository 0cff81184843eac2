"""What the AWS kinds (``ses``, ``sms_optout_list``) share: a botocore client with exactly the
destination's credentials and no retries of its own (the kit retries), and the reading of
botocore's errors (code, HTTP status, modeled members, ``Retry-After``, the transient ones)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.common.errors import RetriableError


def create_client(
    service: str,
    *,
    region: str,
    endpoint_url: str | None,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None,
    timeout: float,
    concurrency: int,
) -> Any:
    """A botocore client of ``service`` (the default AWS credential chain is never consulted;
    AWS_ENDPOINT_URL* variables and ~/.aws endpoint settings do not redirect it). botocore
    types its clients at run time only: callers annotate the result with their Protocol."""
    session = botocore.session.Session()
    return session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        config=Config(
            retries={"total_max_attempts": 1},
            connect_timeout=timeout,
            read_timeout=timeout,
            max_pool_connections=concurrency,
            ignore_configured_endpoint_urls=True,
        ),
    )


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code") or "")


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def error_member(error: ClientError, name: str) -> object:
    """A member of the modeled error (``Reason``, ``Fields``, ``ResourceType``)."""
    response: Mapping[str, object] = error.response
    return response.get(name)


def retry_after_header(error: ClientError) -> float | None:
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def transient(
    error: ClientError | BotoCoreError,
    label: str,
    *,
    throttling: frozenset[str],
    transient_codes: frozenset[str],
    throttle_retry_seconds: float,
) -> RetriableError | None:
    """A ``RetriableError`` when the failed call is worth repeating as it is: no answer
    (timeouts, connection refused/reset, DNS), throttled (after ``Retry-After``, else
    ``throttle_retry_seconds``), a 5xx or a transient code; None otherwise."""
    if not isinstance(error, ClientError):
        return RetriableError(f"{label}: {type(error).__name__}")
    code, status = error_code(error), http_status(error)
    if code in throttling or status == 429:
        wait = retry_after_header(error)
        return RetriableError(
            f"{label} throttled ({code or status})",
            retry_after=throttle_retry_seconds if wait is None else wait,
        )
    if status >= 500 or code in transient_codes:
        return RetriableError(f"{label}: {code or status}")
    return None
