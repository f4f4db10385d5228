"""Retry with exponential backoff and full jitter, for transient storage errors only (DESIGN §3)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3 error codes that mean "try again later"; any 5xx status counts too.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "OperationAborted",
    }
)


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def is_transient(exc: BaseException) -> bool:
    """5xx, throttling and dropped connections are transient; 4xx (404 and 412 included) are not."""
    status = http_status(exc)
    if status is not None or error_code(exc) is not None:
        return (status is not None and status >= 500) or error_code(exc) in TRANSIENT_CODES
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    try:
        from aiohttp import ClientConnectionError, ClientPayloadError
    except ImportError:  # pragma: no cover - aiohttp comes with s3fs
        ClientConnectionError = ClientPayloadError = ()  # type: ignore[assignment,misc]
    import asyncio  # here, not at the top: a process that never retries never pays its import

    return isinstance(
        exc,
        BotoConnectionError
        | HTTPClientError
        | ConnectionError
        | TimeoutError
        | asyncio.TimeoutError
        | ClientConnectionError
        | ClientPayloadError,
    )


class RetryPolicy:
    """``attempts`` tries in all; before try n+1 sleep a random time in [0, min(cap, base * 2**n)]."""

    def __init__(
        self,
        attempts: int = 6,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.rand = rand

    def run(self, attempt: Callable[[int], T], *, what: str) -> T:
        """Call ``attempt(n)`` for n = 0, 1, … until it returns or raises a non-transient error."""
        for n in range(self.attempts):
            try:
                return attempt(n)
            except Exception as exc:
                if n == self.attempts - 1 or not is_transient(exc):
                    raise
                delay = self.rand() * min(self.max_delay, self.base_delay * 2**n)
                log.debug(
                    "transient error on %s (try %d of %d), retrying in %.3fs: %s",
                    what,
                    n + 1,
                    self.attempts,
                    delay,
                    exc,
                )
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
