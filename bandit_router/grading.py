"""Automated grading after a completion, off the request path.

The config lists graders per category (``grading.graders``) and a sampling policy
(``grading.policy``: per-category rates, a $/hour budget for paid graders, ``max_concurrent`` /
``max_waiting``). After an answer is sent, :class:`Grading` runs the category's graders in the
background (an ``llm_judge`` calls its judge model through the router's own upstreams and counts
against ``usd_per_hour``) and posts each result as feedback with ``source = "grader:<name>"``. A
grader that fails (a bad reference, a crashed sandbox) is logged and counted, and never reported as
quality 0.

Bounds: at most ``max_concurrent`` gradings run at once and ``max_waiting`` more wait for a slot; a
grading beyond that is not started (counted ``overloaded``). Sync graders (regex, JSON schema, code
sandboxes) run in a small thread pool owned by this object, never on the event loop nor in the
loop's default executor. A paid grader reserves its ``max_cost_usd`` before the call and settles to
the actual cost after it, so concurrent judgements cannot overshoot the budget together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from feedback import FeedbackSignal
from feedback.graders import AsyncGrader, Grader, GradeRequest, GraderError, GradingPolicy, LLMJudgeGrader, make_grader
from feedback.graders.base import GradeResult
from feedback.graders.judge import Complete

log = logging.getLogger("bandit_router.grading")

PostFeedback = Callable[[str, FeedbackSignal, dict[str, Any]], Awaitable[Any]]


def _actual_cost(value: Any, reserved: float) -> float:
    """A reported cost, or the whole reservation when it is unknown or not a valid amount."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return reserved
    return float(value)


class Grading:
    def __init__(self, graders: Mapping[str, Sequence[Grader]], policy: GradingPolicy) -> None:
        self.graders = graders
        self.policy = policy
        self.stats: dict[str, Counter[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(policy.max_concurrent)
        self._pool: ThreadPoolExecutor | None = None  # created on first use, shut down by drain()

    @classmethod
    def from_config(cls, graders: Mapping[str, Sequence[Mapping[str, Any]]], policy: Mapping[str, Any],
                    complete: Complete | None = None) -> Grading:
        """Build the configured graders; judges get ``complete`` (the router's way to call a model)."""
        built = {cat: [make_grader(spec, where=f"grading.graders.{cat}[{i}]") for i, spec in enumerate(specs)]
                 for cat, specs in graders.items()}
        for gs in built.values():
            for g in gs:
                if isinstance(g, LLMJudgeGrader) and complete is not None:
                    g.bind(complete)
        return cls(built, GradingPolicy.from_spec(policy, where="grading.policy"))

    def _count(self, name: str, what: str) -> None:
        self.stats.setdefault(name, Counter())[what] += 1

    @property
    def pending(self) -> int:
        """Gradings running or waiting for a slot."""
        return len(self._tasks)

    def schedule(self, event_id: str, category: str, model: str, messages: Sequence[Mapping[str, Any]],
                 answer: str, reference: Mapping[str, Any] | None, post: PostFeedback, *,
                 keep: Callable[[Grader], bool] | None = None) -> bool:
        """Start grading in the background (never delays the response); False if nothing to do.

        ``keep``: which graders may see this request (the others are counted ``withheld``), e.g. no
        judge outside a request's locality."""
        graders = self.graders.get(category) or self.graders.get("*") or ()
        if keep is not None:
            for g in graders:
                if not keep(g):
                    self._count(g.name, "withheld")
            graders = [g for g in graders if keep(g)]
        if not graders:
            return False
        if not self.policy.should_grade(event_id, category):
            for g in graders:
                self._count(g.name, "skipped")
            return False
        if len(self._tasks) >= self.policy.max_concurrent + self.policy.max_waiting:
            for g in graders:
                self._count(g.name, "overloaded")
            return False
        req = GradeRequest(answer=answer, reference=reference, messages=tuple(messages), category=category,
                           model=model)
        task = asyncio.get_running_loop().create_task(self._run(event_id, req, graders, post))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _grade(self, g: Grader, req: GradeRequest) -> GradeResult:
        if isinstance(g, AsyncGrader):
            return await g.agrade(req)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.policy.max_concurrent, thread_name_prefix="grading")
        return await asyncio.get_running_loop().run_in_executor(self._pool, g.grade, req)

    async def _run(self, event_id: str, req: GradeRequest, graders: Sequence[Grader], post: PostFeedback) -> None:
        left = list(graders)
        try:
            async with self._slots:
                while left:
                    await self._run_one(event_id, req, left[0], post)
                    left.pop(0)
        except asyncio.CancelledError:
            for g in left:
                self._count(g.name, "cancelled")
            raise

    async def _run_one(self, event_id: str, req: GradeRequest, g: Grader, post: PostFeedback) -> None:
        reserved = g.max_cost_usd if isinstance(g, LLMJudgeGrader) else None
        if reserved is not None and not self.policy.take(reserved, time.time()):
            self._count(g.name, "over_budget")
            return
        cost: Any = None  # unknown (a crash, a cancellation): the reservation stays spent
        try:
            result = await self._grade(g, req)
            cost = result.details.get("cost_usd")
        except GraderError as e:
            cost = e.cost_usd
            self._count(g.name, "failed")
            log.warning("grader %s failed on %s: %s", g.name, event_id, e)
            return
        except Exception:  # a bug in a grader must not take the service down
            self._count(g.name, "failed")
            log.exception("grader %s crashed on %s", g.name, event_id)
            return
        finally:
            if reserved is not None:
                self.policy.settle(reserved, _actual_cost(cost, reserved), time.time())
        try:
            await post(event_id, result.to_signal(), {"grader": g.name, "reason": result.reason,
                                                      "quality": result.quality})
            self._count(g.name, "graded")
        except Exception:
            self._count(g.name, "not_recorded")
            log.exception("grader %s: feedback for %s not recorded", g.name, event_id)

    async def drain(self, timeout: float = 10.0) -> int:
        """Let grading in flight finish (at shutdown); after ``timeout`` seconds cancel what is left (counted
        ``cancelled`` per grader) and return how many gradings were cancelled. Shuts the grader thread pool
        down (a later grading starts a new one)."""
        cancelled = 0
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                cancelled += task.cancel()
            if pending:
                log.warning("grading: %d gradings still running after %.1f s, cancelled", len(pending), timeout)
                await asyncio.wait(pending, timeout=1.0)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        return cancelled
