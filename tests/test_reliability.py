"""The breaker state machine and the retry timing, against a hand-driven clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit_router.reliability import CLOSED, HALF_OPEN, OPEN, Breakers, backoff_delay, retry_wait


def test_breaker_opens_after_n_consecutive_failures_only():
    b = Breakers(["a", "b"], failures=3, cooldown_s=10)
    for t in range(2):
        assert not b.failure(0, t, "500", 0.01)
    b.success(0, 0.01)  # a success resets the count
    assert [b.failure(0, 10 + t, "500", 0.01) for t in range(3)] == [False, False, True]
    assert b.health[0].state == OPEN and list(b.allowed(12.0)) == [False, True]


def test_half_open_admits_one_probe_after_the_cooldown():
    b = Breakers(["a"], failures=1, cooldown_s=10)
    b.failure(0, 100.0, "timeout", 5.0)
    assert not b.allowed(109.9)[0]
    assert b.allowed(110.0)[0]  # cooled down: one probe may go
    b.acquire(0, 110.0)
    assert b.health[0].state == HALF_OPEN and not b.allowed(110.5)[0]  # only one at a time
    assert b.failure(0, 111.0, "timeout", 5.0)  # the probe failed: open again, a fresh cooldown
    assert not b.allowed(120.9)[0] and b.allowed(121.0)[0]
    b.acquire(0, 121.0)
    b.success(0, 0.2)
    assert b.health[0].state == CLOSED and b.allowed(121.1)[0]
    assert b.health[0].times_opened == 2


def test_release_gives_the_probe_back():
    b = Breakers(["a"], failures=1, cooldown_s=1)
    b.failure(0, 0.0, "x", 0.0)
    b.acquire(0, 2.0)
    assert not b.allowed(2.0)[0]
    b.release(0)
    assert b.allowed(2.0)[0]


def test_snapshot_reports_rates_and_latency():
    b = Breakers(["a"], failures=10, cooldown_s=1)
    for i in range(8):
        b.success(0, 0.010 * (i + 1))
    b.failure(0, 1.0, "upstream a answered 500", 0.5)
    b.failure(0, 1.0, "upstream a answered 500", 0.5)
    s = b.snapshot()["a"]
    assert s["calls"] == 10 and s["failures"] == 2 and s["error_rate_recent"] == pytest.approx(0.2)
    assert s["latency_p50_ms"] == pytest.approx(50.0) and s["breaker"] == CLOSED
    assert s["last_error"] == "upstream a answered 500"


@given(st.integers(0, 12), st.floats(0.001, 1.0), st.floats(0.0, 5.0), st.integers(0, 2**32 - 1))
def test_backoff_is_full_jitter_capped(attempt, base, cap, seed):
    d = backoff_delay(attempt, base, cap, random.Random(seed))
    assert 0.0 <= d <= min(cap, base * 2 ** attempt) + 1e-12


def test_retry_after_is_honoured_up_to_the_cap_else_fall_back():
    rng = random.Random(0)
    assert retry_wait(1.5, 0, 0.1, 2.0, 5.0, rng) == 1.5
    assert retry_wait(30.0, 0, 0.1, 2.0, 5.0, rng) is None
    assert 0.0 <= retry_wait(None, 2, 0.1, 2.0, 5.0, rng) <= 0.4
