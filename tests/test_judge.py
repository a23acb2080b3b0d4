"""The LLM judge grader on its own (the model call is injected)."""

import asyncio

import pytest

from feedback.graders import GradeRequest, GraderError, LLMJudgeGrader, make_grader


def run(grader, **kw):
    req = GradeRequest(answer="4", reference=None, messages=({"role": "user", "content": "2+2?"},), **kw)
    return asyncio.run(grader.agrade(req))


def judge_saying(text, calls):
    async def complete(model, messages):
        calls.append((model, messages))
        return text, 0.002
    return complete


def test_scores_on_the_configured_scale_and_reports_the_judge():
    calls = []
    g = make_grader({"type": "llm_judge", "model": "big", "scale": 5})
    g.bind(judge_saying("SCORE: 4\nright, terse", calls))
    result = run(g, model="small")
    assert result.quality == pytest.approx(0.8) and "big" in result.reason
    assert calls[0][0] == "big" and "2+2?" in calls[0][1][1]["content"] and "4" in calls[0][1][1]["content"]


def test_never_judges_its_own_model_unless_allowed():
    calls = []
    g = LLMJudgeGrader(model="big")
    g.bind(judge_saying("SCORE: 9", calls))
    with pytest.raises(GraderError, match="judged model"):
        run(g, model="big")
    assert calls == []
    g = LLMJudgeGrader(model="big", alternates=["big", "other"])
    g.bind(judge_saying("SCORE: 9", calls))
    run(g, model="big")
    assert calls[-1][0] == "other"
    g = LLMJudgeGrader(model="big", allow_self=True)
    g.bind(judge_saying("SCORE: 9", calls))
    run(g, model="big")
    assert calls[-1][0] == "big"


@pytest.mark.parametrize("reply", ["I like it", "SCORE: 11", ""])
def test_an_unusable_verdict_is_a_grader_failure_not_a_zero(reply):
    g = LLMJudgeGrader(model="big")
    g.bind(judge_saying(reply, []))
    with pytest.raises(GraderError):
        run(g, model="small")


def test_unbound_judge_fails_clearly():
    with pytest.raises(GraderError, match="bind"):
        run(LLMJudgeGrader(model="big"), model="small")


def test_failures_report_what_they_cost():
    g = LLMJudgeGrader(model="big")
    g.bind(judge_saying("no verdict", []))
    with pytest.raises(GraderError) as err:
        run(g, model="small")
    assert err.value.cost_usd == pytest.approx(0.002)  # paid for, unusable: charged
    with pytest.raises(GraderError) as err:
        run(g, model="big")
    assert err.value.cost_usd == 0.0  # refused before any call

    async def broken(model, messages):
        raise ConnectionResetError("after the answer")

    g.bind(broken)
    with pytest.raises(GraderError, match="call failed") as err:
        run(g, model="small")
    assert err.value.cost_usd is None  # unknown: the budget keeps the reservation
