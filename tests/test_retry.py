"""Retry policy: the table decides what is retried; waits grow, jitter, and honour Retry-After."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from autoresearch.agents.providers import (AuthError, BadResponse, ConnectionFailed, RateLimited,
                                           RequestRejected, ServerError, Timeout)
from autoresearch.agents.retry import RULES, RetryPolicy, Rule, call_with_retries, parse_retry_after

NO_JITTER = RetryPolicy(max_attempts=4, base_delay=1.0, factor=2.0, max_delay=5.0, jitter=0.0)


class Script:
    """A callable that raises the scripted errors in turn, then returns "done"."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retry_after_in_seconds():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(" 1.5 ") == 1.5


def test_retry_after_as_an_http_date():
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30.0)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0


def test_retry_after_absent_or_unreadable_is_none():
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None


def test_waits_grow_exponentially_up_to_the_cap():
    assert [NO_JITTER.delay(attempt) for attempt in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_jitter_spreads_waits_within_its_fraction():
    policy = RetryPolicy(base_delay=10.0, factor=1.0, jitter=0.2)
    rng = random.Random(0)
    waits = [policy.delay(1, rng=rng) for _ in range(200)]
    assert all(8.0 <= wait <= 12.0 for wait in waits)
    assert max(waits) - min(waits) > 2.0


def test_retry_after_replaces_the_computed_wait_up_to_its_cap():
    policy = RetryPolicy(base_delay=1.0, max_retry_after=60.0)
    assert policy.delay(1, RateLimited("429", retry_after=7.0)) == 7.0
    assert policy.delay(1, ServerError("503", 503, retry_after=3600.0)) == 60.0


def test_transient_failures_are_retried_until_success():
    sleeps = []
    fn = Script(RateLimited("429"), ServerError("500"), Timeout("slow"), ConnectionFailed("reset"))
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, factor=2.0, max_delay=100.0, jitter=0.0)
    assert call_with_retries(fn, policy, sleep=sleeps.append) == "done"
    assert fn.calls == 5
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_retry_after_is_what_the_caller_sleeps():
    sleeps = []
    fn = Script(RateLimited("429", retry_after=3.0))
    assert call_with_retries(fn, NO_JITTER, sleep=sleeps.append) == "done"
    assert sleeps == [3.0]


@pytest.mark.parametrize("error", [AuthError("401"), RequestRejected("400"), BadResponse("html"), ValueError("bug")])
def test_permanent_failures_are_never_retried(error):
    sleeps = []
    fn = Script(error)
    with pytest.raises(type(error)) as caught:
        call_with_retries(fn, NO_JITTER, sleep=sleeps.append)
    assert fn.calls == 1 and sleeps == []
    assert caught.value.attempts == 1


def test_gives_up_after_max_attempts_with_the_last_error():
    fn = Script(Timeout("1"), Timeout("2"), Timeout("3"), Timeout("4"), Timeout("5"))
    with pytest.raises(Timeout, match="4") as caught:
        call_with_retries(fn, NO_JITTER, sleep=lambda s: None)
    assert fn.calls == 4 and caught.value.attempts == 4


def test_the_table_is_data_that_a_policy_can_override():
    assert RULES["auth"].retry is False and RULES["timeout"].retry is True
    strict = RetryPolicy(rules={**RULES, "timeout": Rule(False, "no patience")})
    fn = Script(Timeout("slow"))
    with pytest.raises(Timeout):
        call_with_retries(fn, strict, sleep=lambda s: None)
    assert fn.calls == 1
    assert strict.rule(Timeout("x")).message == "no patience"


def test_each_retry_is_reported():
    seen = []
    fn = Script(ServerError("500"))
    call_with_retries(fn, NO_JITTER, sleep=lambda s: None, on_retry=lambda e, n, w: seen.append((str(e), n, w)))
    assert seen == [("500", 1, 1.0)]
