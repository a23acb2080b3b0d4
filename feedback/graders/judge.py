"""``llm_judge``: ask a judge model to score an answer against a rubric.

The judge calls a model through an injected ``complete(model, messages) -> (text, cost_usd)``
coroutine, so this package stays free of any HTTP or service code: the router binds its own
upstream layer with :meth:`LLMJudgeGrader.bind`. The judge never grades an answer of its own
model unless ``allow_self`` is set: it uses the first of ``alternates`` that is not the judged
model, or fails (a :class:`GraderError`, counted, never a quality 0).

Spec: ``{"type": "llm_judge", "model": "gpt-5.4", "rubric": "...", "scale": 10,
"alternates": ["gemini-3.1-pro"], "allow_self": false, "max_cost_usd": 0.01}``.

Budgeting (done by the caller, e.g. ``bandit_router.grading``): ``max_cost_usd`` is reserved before each call
and settled to the actual cost after it. The actual cost is ``details["cost_usd"]`` of a result, or
:attr:`GraderError.cost_usd` of a failure: ``0.0`` when no call was made, the call's cost when its reply could
not be used, ``None`` (unknown: keep the reservation) when the call itself raised.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from feedback.graders._spec import SpecReader
from feedback.graders.base import AsyncGrader, GradeRequest, GraderError, GradeResult

Complete = Callable[[str, list[dict[str, Any]]], Awaitable[tuple[str, float]]]

DEFAULT_RUBRIC = ("Judge whether the answer is correct, complete and directly useful for the request. "
                  "Penalise factual errors and unhelpful padding.")
SCORE_RE = re.compile(r"SCORE:\s*(-?\d+(?:\.\d+)?)", re.I)


class LLMJudgeGrader(AsyncGrader):
    def __init__(self, name: str | None = None, *, model: str, rubric: str = DEFAULT_RUBRIC, scale: float = 10.0,
                 alternates: Sequence[str] = (), allow_self: bool = False, max_cost_usd: float = 0.01) -> None:
        self.name = name or "llm_judge"
        self.model = model
        self.rubric = rubric
        self.scale = scale
        self.alternates = tuple(alternates)
        self.allow_self = allow_self
        self.max_cost_usd = max_cost_usd  # the budget reserves this much before each call
        self._complete: Complete | None = None

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> LLMJudgeGrader:
        return cls(name, model=r.text("model"), rubric=r.text("rubric", DEFAULT_RUBRIC),
                   scale=r.number("scale", 10.0, minimum=1.0), alternates=r.str_list("alternates"),
                   allow_self=r.flag("allow_self", False), max_cost_usd=r.number("max_cost_usd", 0.01))

    def bind(self, complete: Complete) -> None:
        """Give the judge a way to call models (the router's upstream layer)."""
        self._complete = complete

    def judge_for(self, judged: str | None) -> str:
        if self.allow_self or judged != self.model:
            return self.model
        for alt in self.alternates:
            if alt != judged:
                return alt
        raise GraderError(self.name, f"the judge model {self.model} is the judged model and no alternate is set",
                          cost_usd=0.0)

    def prompt(self, request: GradeRequest) -> list[dict[str, Any]]:
        question = "\n".join(str(m.get("content", "")) for m in request.messages if m.get("role") == "user")
        return [
            {"role": "system", "content": f"You are a strict grader. {self.rubric} "
                                          f"Reply with one line 'SCORE: N' where N is from 0 to {self.scale:g}, "
                                          "then one short line of reasons."},
            {"role": "user", "content": f"REQUEST:\n{question[-6000:]}\n\nANSWER:\n{request.answer[-6000:]}"},
        ]

    async def agrade(self, request: GradeRequest) -> GradeResult:
        if self._complete is None:
            raise GraderError(self.name, "no model access bound (the service calls bind())", cost_usd=0.0)
        judge = self.judge_for(request.model)
        try:
            text, cost = await self._complete(judge, self.prompt(request))
        except GraderError:
            raise
        except Exception as exc:  # the upstream may have answered (and billed) before this: cost unknown
            raise GraderError(self.name, f"the judge {judge} call failed: {type(exc).__name__}: {exc}") from exc
        found = SCORE_RE.findall(text or "")
        if not found:
            raise GraderError(self.name, f"the judge {judge} gave no 'SCORE: N' line", cost_usd=cost)
        score = float(found[-1])
        if not 0.0 <= score <= self.scale:
            raise GraderError(self.name, f"the judge {judge} gave {score:g}, outside 0..{self.scale:g}",
                              cost_usd=cost)
        reason = (text.split("\n", 1)[1].strip() if "\n" in text else "") or f"scored by {judge}"
        return GradeResult(self.name, score / self.scale, f"{judge}: {reason}",
                           {"judge": judge, "cost_usd": cost, "score": score})
