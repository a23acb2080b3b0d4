"""Background grading: budget reservations for paid judges, the concurrency cap, the grader thread pool, drain."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from bandit_router.grading import Grading
from feedback.graders import Grader, GradeRequest, GradeResult, GraderSpecError, GradingPolicy, LLMJudgeGrader

MESSAGES = [{"role": "user", "content": "2+2?"}]


class Posted:
    def __init__(self) -> None:
        self.items: list[tuple[str, float]] = []

    async def __call__(self, event_id: str, signal: Any, raw: dict[str, Any]) -> None:
        self.items.append((event_id, raw["quality"]))


def judge(reply: str | Exception | None, calls: list[str], *, cost: float = 0.1, delay: float = 0.05,
          max_cost_usd: float = 0.25) -> LLMJudgeGrader:
    """A judge whose model call is slow and costs ``cost``; ``reply=None`` hangs forever."""
    g = LLMJudgeGrader("judge", model="big", max_cost_usd=max_cost_usd)

    async def complete(model: str, messages: list[dict[str, Any]]) -> tuple[str, float]:
        calls.append(model)
        if reply is None:
            await asyncio.Event().wait()
        await asyncio.sleep(delay)
        if isinstance(reply, Exception):
            raise reply
        return reply, cost

    g.bind(complete)
    return g


def budget(**kw: Any) -> GradingPolicy:
    # no refill during a test: only the burst counts; 0.25 per judge call, so $0.75 affords three
    return GradingPolicy(usd_per_hour=0.0, burst_usd=0.75, **kw)


def schedule(grading: Grading, post: Posted, n: int, *, model: str = "small") -> list[bool]:
    return [grading.schedule(f"e{i}", "general", model, MESSAGES, "4", None, post) for i in range(n)]


def test_concurrent_judgements_reserve_the_budget_before_calling() -> None:
    calls: list[str] = []
    # each call really costs its whole reservation, so no refund makes room for a fourth
    grading = Grading({"*": [judge("SCORE: 8\nfine", calls, cost=0.25)]}, budget())
    post = Posted()

    async def main() -> None:
        assert all(schedule(grading, post, 10))
        await grading.drain()

    asyncio.run(main())
    assert len(calls) == 3  # the budget affords three calls of $0.25: no more were made
    assert grading.stats["judge"] == {"graded": 3, "over_budget": 7}
    assert len(post.items) == 3 and all(q == pytest.approx(0.8) for _, q in post.items)
    assert grading.policy.available(time.time()) == pytest.approx(0.0)


@pytest.mark.parametrize(("reply", "outcome", "spent"), [
    ("SCORE: 8", "graded", 0.1),  # settled to the actual cost: the rest of the $0.25 reservation is refunded
    ("I like it", "failed", 0.1),  # paid for, unusable verdict: its actual cost is charged
    ("SCORE: 99", "failed", 0.1),  # out of scale: same
    (RuntimeError("connection reset after the answer"), "failed", 0.25),  # cost unknown: reservation kept
])
def test_a_judgement_is_charged_its_cost_even_when_it_fails(reply: str | Exception, outcome: str,
                                                            spent: float) -> None:
    calls: list[str] = []
    grading = Grading({"*": [judge(reply, calls)]}, budget())
    post = Posted()

    async def main() -> None:
        assert all(schedule(grading, post, 1))
        await grading.drain()

    asyncio.run(main())
    assert len(calls) == 1 and grading.stats["judge"] == {outcome: 1}
    assert len(post.items) == (outcome == "graded")  # a failure is never a quality 0
    assert grading.policy.available(time.time()) == pytest.approx(0.75 - spent)


def test_a_judgement_refused_before_any_call_costs_nothing() -> None:
    calls: list[str] = []
    grading = Grading({"*": [judge("SCORE: 8", calls)]}, budget())  # the judge may not judge its own model

    async def main() -> None:
        assert all(schedule(grading, Posted(), 1, model="big"))
        await grading.drain()

    asyncio.run(main())
    assert calls == [] and grading.stats["judge"] == {"failed": 1}
    assert grading.policy.available(time.time()) == pytest.approx(0.75)


class Blocking(Grader):
    """A sync grader that holds its thread until released; records where and how many ran at once."""

    type_name = "blocking"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.threads: set[str] = set()

    def grade(self, request: GradeRequest) -> GradeResult:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)
        self.release.wait(5.0)
        with self.lock:
            self.running -= 1
        return self.result(1.0, "ok")


def test_grading_is_capped_runs_sync_graders_in_its_own_pool_and_skips_the_overflow() -> None:
    grader = Blocking()
    grading = Grading({"*": [grader]}, GradingPolicy(max_concurrent=2, max_waiting=3))
    post = Posted()

    async def main() -> None:
        accepted = schedule(grading, post, 10)
        assert accepted == [True] * 5 + [False] * 5  # two running, three waiting, the rest not started
        assert grading.pending == 5
        for _ in range(200):
            if grader.running == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert grader.running == 2  # the loop is free while sync graders run
        grader.release.set()
        assert await grading.drain(timeout=5.0) == 0

    asyncio.run(main())
    assert grader.peak == 2
    assert grading.stats["blocking"] == {"graded": 5, "overloaded": 5}  # overloaded is not a quality 0
    assert len(post.items) == 5
    assert grader.threads and all(name.startswith("grading") for name in grader.threads)
    assert grading._pool is None  # shut down by drain


def test_drain_cancels_stuck_gradings_after_its_timeout() -> None:
    calls: list[str] = []
    grading = Grading({"*": [judge(None, calls)]}, budget())

    async def main() -> float:
        assert all(schedule(grading, Posted(), 2))
        await asyncio.sleep(0.01)
        start = time.monotonic()
        assert await grading.drain(timeout=0.1) == 2
        return time.monotonic() - start

    assert asyncio.run(main()) < 2.0
    assert grading.pending == 0 and len(calls) == 2
    assert grading.stats["judge"] == {"cancelled": 2}
    # the upstream may have billed a call cut off mid-way: its reservation stays spent
    assert grading.policy.available(time.time()) == pytest.approx(0.25)


def test_concurrency_settings_come_from_the_policy_spec() -> None:
    policy = GradingPolicy.from_spec({"max_concurrent": 8, "max_waiting": 0})
    assert (policy.max_concurrent, policy.max_waiting) == (8, 0)
    assert (GradingPolicy().max_concurrent, GradingPolicy().max_waiting) == (4, 64)
    for spec, field in (({"max_concurrent": 0}, "grading.max_concurrent"), ({"max_waiting": -1}, "grading.max_waiting"),
                        ({"max_concurrent": 2.5}, "grading.max_concurrent")):
        with pytest.raises(GraderSpecError, match=field):
            GradingPolicy.from_spec(spec, where="grading")


def test_settle_refunds_up_to_the_burst_and_charges_overruns() -> None:
    policy = GradingPolicy(usd_per_hour=3.6, burst_usd=0.5)
    assert policy.take(0.3, now=0.0)
    policy.settle(0.3, 0.1, now=0.0)
    assert policy.available(0.0) == pytest.approx(0.4)
    policy.settle(0.0, 0.6, now=0.0)  # an actual cost above its reservation: in debt
    assert policy.available(0.0) == pytest.approx(-0.2)
    assert policy.take(0.1, now=1000.0)  # refilled to the burst (0.5), then reserved: 0.4 ...
    policy.settle(0.1, 0.0, now=2000.0)  # ... refilled to the burst again while the call ran
    assert policy.available(2000.0) == pytest.approx(0.5)  # a refund never lifts it above the burst
    GradingPolicy().settle(1.0, 2.0, now=0.0)  # no budget: nothing to do
