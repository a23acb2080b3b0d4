"""One request's way through the upstreams: retries on the same model, then the next-best model.

The service drives every upstream call the same way::

    tries = Tries(decision, breakers, settings, switch=..., on_model_failed=...)
    while True:
        tries.begin()
        try:
            result = await provider_for(decision).complete(body)
        except UpstreamError as e:
            if await tries.failed(e):
                continue          # the same model after a backoff, or the decision now names another
            raise                 # nothing left to try: the caller answers with e
        tries.succeeded()
        break

Rules:

* A 400 from an upstream is the request's own fault: no retry, no fallback, the breaker is not told.
* A retryable failure (5xx, 429, timeouts, refused connections) is retried on the same model up
  to ``retries`` times with full-jitter backoff; a ``Retry-After`` longer than ``retry_after_max_s``
  (or a breaker that just opened) skips the remaining retries.
* Then the next-best eligible model by the decision's own scores (Thompson draw − cost), whose
  breaker admits it, takes over, at most ``fallbacks`` times. The decision is switched in place,
  so feedback on the event teaches the model that answered.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import ReliabilityConfig
from .providers.base import UpstreamError
from .reliability import Breakers, retry_wait
from .router import Decision


@dataclass
class Attempt:
    """A failed upstream call."""

    model: str
    status: int
    error: str


class Tries:
    def __init__(self, decision: Decision, breakers: Breakers, settings: ReliabilityConfig, *,
                 switch: Callable[[Decision, int], None], on_model_failed: Callable[[Decision], None],
                 rng: random.Random, fallback: bool = True,
                 on_latency: Callable[[Decision, float | None, float], None] | None = None) -> None:
        self.d = decision
        self.on_latency = on_latency  # (decision, time to first chunk or None, total), after a success
        self.breakers = breakers
        self.settings = settings
        self.switch = switch
        self.on_model_failed = on_model_failed
        self.rng = rng
        self.attempts: list[Attempt] = []  # the failed ones, in order
        self._tried = {decision.arm}
        self._retry = 0
        self._fallbacks_left = settings.fallbacks if fallback else 0
        self._t0 = 0.0
        self._first: float | None = None
        self._open = False

    def begin(self) -> None:
        self.breakers.acquire(self.d.arm, time.time())
        self._t0 = time.monotonic()
        self._first = None
        self._open = True

    def first_chunk(self) -> None:
        """A streamed answer's first chunk arrived (its time to first token)."""
        if self._first is None:
            self._first = time.monotonic() - self._t0

    def succeeded(self) -> None:
        if self._open:
            total = time.monotonic() - self._t0
            self.breakers.success(self.d.arm, total)
            self._open = False
            if self.on_latency is not None:
                self.on_latency(self.d, self._first, total)

    def abandoned(self) -> None:
        """The call ended without a verdict on the model (cancelled, the client left)."""
        if self._open:
            self.breakers.release(self.d.arm)
            self._open = False

    def failed_late(self, e: UpstreamError) -> None:
        """A failure after the answer began (mid-stream): counted against the model, no retry."""
        self._open = False
        if e.status != 400:
            self.breakers.failure(self.d.arm, time.time(), e.message, time.monotonic() - self._t0)
            self.attempts.append(Attempt(self.d.model, e.status, e.message))

    async def failed(self, e: UpstreamError) -> bool:
        """Record the failure; True when there is something more to try (after any backoff)."""
        self._open = False
        if e.status == 400:  # the request's own fault: another model would refuse it too
            self.breakers.release(self.d.arm)
            return False
        now = time.time()
        opened = self.breakers.failure(self.d.arm, now, e.message, time.monotonic() - self._t0)
        self.attempts.append(Attempt(self.d.model, e.status, e.message))
        s = self.settings
        if e.retryable and not opened and self._retry < s.retries:
            wait = retry_wait(e.retry_after, self._retry, s.backoff_s, s.backoff_max_s, s.retry_after_max_s,
                              self.rng)
            if wait is not None:
                self._retry += 1
                if wait > 0:
                    await asyncio.sleep(wait)
                return True
        return self._fall_back(now)

    def _fall_back(self, now: float) -> bool:
        if self._fallbacks_left <= 0 or len(self.d.scores) == 0:
            return False
        scores = np.where(self.breakers.allowed(now), self.d.scores, -math.inf)
        for k in self._tried:
            scores[k] = -math.inf
        k = int(scores.argmax())
        if not math.isfinite(scores[k]):
            return False
        self.on_model_failed(self.d)
        self._fallbacks_left -= 1
        self._tried.add(k)
        self._retry = 0
        self.switch(self.d, k)
        return True
