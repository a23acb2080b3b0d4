"""Automated grading after a completion, off the request path.

The config lists graders per category (``grading.graders``) and a sampling policy
(``grading.policy``: per-category rates, a $/hour budget for paid graders). After an answer is
sent, :class:`Grading` runs the category's graders in the background (an ``llm_judge`` calls
its judge model through the router's own upstreams and counts against ``usd_per_hour``) and posts each result as
feedback with ``source = "grader:<name>"``. A grader that fails (a bad reference, a crashed
sandbox) is logged and counted, and never reported as quality 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from feedback import FeedbackSignal
from feedback.graders import Grader, GradeRequest, GraderError, GradingPolicy, LLMJudgeGrader, make_grader
from feedback.graders.judge import Complete

log = logging.getLogger("bandit_router.grading")

PostFeedback = Callable[[str, FeedbackSignal, dict[str, Any]], Awaitable[Any]]


class Grading:
    def __init__(self, graders: Mapping[str, Sequence[Grader]], policy: GradingPolicy) -> None:
        self.graders = graders
        self.policy = policy
        self.stats: dict[str, Counter[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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

    def schedule(self, event_id: str, category: str, model: str, messages: Sequence[Mapping[str, Any]],
                 answer: str, reference: Mapping[str, Any] | None, post: PostFeedback) -> bool:
        """Start grading in the background (never delays the response); False if nothing to do."""
        graders = self.graders.get(category) or self.graders.get("*") or ()
        if not graders:
            return False
        if not self.policy.should_grade(event_id, category):
            for g in graders:
                self._count(g.name, "skipped")
            return False
        req = GradeRequest(answer=answer, reference=reference, messages=tuple(messages), category=category,
                           model=model)
        task = asyncio.get_running_loop().create_task(self._run(event_id, req, graders, post))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, event_id: str, req: GradeRequest, graders: Sequence[Grader], post: PostFeedback) -> None:
        for g in graders:
            paid = isinstance(g, LLMJudgeGrader)
            if paid and not self.policy.allow(g.max_cost_usd, time.time()):
                self._count(g.name, "over_budget")
                continue
            try:
                result = await g.agrade(req)
                if paid:
                    self.policy.spend(float(result.details.get("cost_usd", 0.0)), time.time())
            except GraderError as e:
                self._count(g.name, "failed")
                log.warning("grader %s failed on %s: %s", g.name, event_id, e)
                continue
            except Exception:  # a bug in a grader must not take the service down
                self._count(g.name, "failed")
                log.exception("grader %s crashed on %s", g.name, event_id)
                continue
            try:
                await post(event_id, result.to_signal(), {"grader": g.name, "reason": result.reason,
                                                          "quality": result.quality})
                self._count(g.name, "graded")
            except Exception:
                self._count(g.name, "not_recorded")
                log.exception("grader %s: feedback for %s not recorded", g.name, event_id)

    async def drain(self, timeout: float = 10.0) -> None:
        """Let grading in flight finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
