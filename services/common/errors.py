"""The ways processing a message can fail (after getsentry/arroyo).

* ``RetriableError``: the world is temporarily broken (database down, broker
  unreachable). Retry the same batch with backoff; commit nothing meanwhile.
* ``PoisonMessage``: this message can never be processed. Send it to the DLQ with
  its reason and carry on with the others.
* ``ConfigurationError``: a setting is missing or wrong; the service does not start.
"""

from __future__ import annotations


class OptoutError(Exception):
    """Base class of the project's own errors."""


class ConfigurationError(OptoutError):
    """A setting is missing or wrong; the message says which and what to check."""


class RetriableError(OptoutError):
    """A transient failure: the same work will succeed later. ``log_each_retry`` False: a
    condition whose start and end someone else reports once (e.g. refused credentials), so
    the consume loop logs its retries at debug level only."""

    log_each_retry: bool = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoisonMessage(OptoutError):
    """A message that can never be processed. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
