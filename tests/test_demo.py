"""The demo: its prompts reach the right category everywhere, and a short run works end to end."""

import random

from bandit_router.categories import CategoryClassifier
from bandit_router.demo import MIX, run_demo, task
from bandit_router.simulator.protocol import expected_answer


def test_demo_prompts_classify_as_their_category():
    # the simulator infers the category of what the router forwards, so they must agree
    clf, rng = CategoryClassifier(), random.Random(3)
    for cat in MIX:
        for i in range(50):
            prompt, expected = task(cat, i, rng)
            messages = [{"role": "user", "content": prompt}]
            assert clf.classify(messages) == cat
            assert expected_answer(messages) == expected


def test_short_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo.png"
    result = run_demo(requests=200, seed=1, db=str(tmp_path / "demo.db"), out=str(out), concurrency=8)
    assert result["requests"] == 200
    assert out.stat().st_size > 10_000
    assert set(result["direct"]) == {"gpt-5.4", "claude-opus-4.6", "gemini-3.1-pro", "glm-5"}
    assert 0.0 < result["router"]["quality"] <= 1.0 and result["router"]["cost"] > 0
    assert [e[0] for e in result["events"]] == [80, 140]
    assert (tmp_path / "demo.db").exists()
    # the router learned from its own grader only (the demo posts no feedback)
    assert result["graders"]["expected"]["graded"] >= 150
