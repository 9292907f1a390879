"""Retry policy as data: which provider errors are worth another attempt, and how long to wait.

The table maps an error's `kind` to (retry?, message). Waits grow exponentially with
jitter, so many clients do not retry in lockstep; a server's Retry-After (seconds or an
HTTP date) on 429/503 replaces the computed wait. Errors of unknown kind are not retried.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Rule:
    retry: bool
    message: str  # what the failure means, for a proposal's reason


RULES = {
    "auth": Rule(False, "the API key was refused"),
    "rate_limited": Rule(True, "the server kept rate-limiting requests"),
    "server": Rule(True, "the server kept failing"),
    "timeout": Rule(True, "the server did not reply in time"),
    "connection": Rule(True, "the connection to the server kept failing"),
    "bad_response": Rule(False, "the server's reply could not be read"),
    "rejected": Rule(False, "the server rejected the request"),
}


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # attempts in all, the first included
    base_delay: float = 1.0  # seconds before the first retry
    factor: float = 2.0  # each further wait is this much longer
    max_delay: float = 60.0  # cap on a computed wait
    jitter: float = 0.25  # +- this fraction of random spread on computed waits
    max_retry_after: float = 300.0  # cap on a server-requested wait, so the loop never stalls for hours
    rules: dict = field(default_factory=lambda: dict(RULES))

    def rule(self, error: Exception) -> Rule:
        return self.rules.get(getattr(error, "kind", None), Rule(False, "the request failed"))

    def should_retry(self, error: Exception) -> bool:
        return self.rule(error).retry

    def delay(self, attempt: int, error: Exception | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        requested = getattr(error, "retry_after", None)
        if requested is not None:
            return min(float(requested), self.max_retry_after)
        computed = min(self.base_delay * self.factor ** (attempt - 1), self.max_delay)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, computed * (1 + spread))


def call_with_retries(fn, policy: RetryPolicy, sleep=time.sleep, on_retry=None):
    """fn() until it succeeds, or until an error the table does not retry, or attempts run out.

    The last error is re-raised with `attempts` set on it. `on_retry(error, attempt, wait)`
    is told about each retry, e.g. to log it.
    """
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as error:
            if not policy.should_retry(error) or attempt >= policy.max_attempts:
                error.attempts = attempt
                raise
            wait = policy.delay(attempt, error)
            if on_retry is not None:
                on_retry(error, attempt, wait)
            sleep(wait)
            attempt += 1
