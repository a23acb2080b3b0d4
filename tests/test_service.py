"""End to end over loopback: a real router process in front of the real simulator process, driven
by the official openai SDK. No mocked HTTP layer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from bandit_router.config import EXAMPLE_CONFIG
from bandit_router.procs import free_port, start, stop
from bandit_router.server.auth import ADMIN_TOKEN_ENV

EXE = [sys.executable, "-m", "bandit_router.cli"]
ADMIN_TOKEN = "test-admin-token-" + "x" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def simulator():
    port = free_port()
    proc = start(["simulate", "--port", str(port), "--latency-scale", "0", "--seed", "1"],
                 f"http://127.0.0.1:{port}/healthz")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


class RouterProc:
    def __init__(self, tmp: Path, sim_url: str) -> None:
        cfg = yaml.safe_load(EXAMPLE_CONFIG)
        for m in cfg["models"]:
            m["base_url"] = sim_url + "/v1"
        cfg["bandit"]["seed"] = 7
        self.config = tmp / "router.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.db = tmp / "state.db"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        self.port = free_port()
        self.proc = start(["serve", "--config", str(self.config), "--port", str(self.port), "--db", str(self.db)],
                          self.url + "/healthz", env={ADMIN_TOKEN_ENV: ADMIN_TOKEN})

    def stop(self) -> None:
        assert self.proc is not None
        stop(self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def router(simulator, tmp_path_factory):
    r = RouterProc(tmp_path_factory.mktemp("router"), simulator)
    r.start()
    yield r
    r.stop()


MODELS = {"gpt-5.4", "claude-opus-4.6", "gemini-3.1-pro", "glm-5"}
CODING = [{"role": "user", "content": "Write a Python function that reverses a linked list."}]


def test_route_and_complete_with_the_openai_sdk(router):
    raw = router.client().chat.completions.with_raw_response.create(model="auto", messages=CODING)
    completion = raw.parse()
    assert completion.model in MODELS
    assert raw.headers["X-Router-Model"] == completion.model
    assert raw.headers["X-Router-Category"] == "coding"
    assert len(raw.headers["X-Router-Event-Id"]) >= 20
    extra = completion.model_extra["router"]
    assert extra["event_id"] == raw.headers["X-Router-Event-Id"]
    assert extra["cost_usd"] > 0
    assert completion.usage.prompt_tokens > 0 and completion.choices[0].message.content


def test_streaming_ends_with_done_and_records_cost(router):
    client = router.client()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=CODING, stream=True, stream_options={"include_usage": True})
    assert raw.headers["X-Router-Category"] == "coding"
    text, usage = "", None
    for chunk in raw.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text and usage is not None and usage.completion_tokens > 0
    # the stream's raw bytes end with [DONE]
    with httpx.stream("POST", router.url + "/v1/chat/completions",
                      json={"model": "auto", "messages": CODING, "stream": True}) as r:
        body = b"".join(r.iter_bytes())
    assert body.rstrip().endswith(b"data: [DONE]")


def test_hints_from_header_and_body(router):
    client = router.client()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], extra_headers={"X-Router-Category": "science"})
    assert raw.headers["X-Router-Category"] == "science"
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}],
        extra_body={"router": {"category": "reasoning", "cost_weight": 0}})
    assert raw.headers["X-Router-Category"] == "reasoning"


def test_pass_through_is_logged_not_learned(router):
    raw = router.client().chat.completions.with_raw_response.create(model="glm-5", messages=CODING)
    assert raw.parse().model == "glm-5"
    r = httpx.post(router.url + "/v1/feedback", json={"event_id": raw.headers["X-Router-Event-Id"], "score": 1.0})
    assert r.status_code == 200 and r.json()["learned"] is False


def test_models_lists_auto_and_configured(router):
    ids = {m.id for m in router.client().models.list()}
    assert ids == MODELS | {"auto"}


def test_route_only_then_feedback(router):
    r = httpx.post(router.url + "/v1/route", json={"messages": CODING, "cost_weight": 5})
    assert r.status_code == 200
    out = r.json()
    assert out["model"] in MODELS and out["category"] == "coding" and out["expected_cost_usd"] > 0
    assert {c["model"] for c in out["candidates"]} == MODELS
    f = httpx.post(router.url + "/v1/feedback", json={"event_id": out["event_id"], "rating": {"stars": 4}})
    assert f.status_code == 200 and f.json()["quality"] == 0.75


def _arm(router, category, model):
    return httpx.get(router.url + "/admin/arms", headers=ADMIN).json()["categories"][category][model]


def test_feedback_edge_cases(router):
    out = httpx.post(router.url + "/v1/route", json={"messages": CODING, "category": "coding"}).json()
    eid, model = out["event_id"], out["model"]
    before = _arm(router, "coding", model)
    assert httpx.post(router.url + "/v1/feedback", json={"event_id": eid, "score": 0.2}).status_code == 200
    # the same (event_id, source) again replaces: one observation, one feedback row
    r = httpx.post(router.url + "/v1/feedback", json={"event_id": eid, "score": 0.9})
    assert r.status_code == 200 and r.json()["decision_quality"] == pytest.approx(0.9)
    # another source combines (mean over sources), still one observation
    r = httpx.post(router.url + "/v1/feedback",
                   json={"event_id": eid, "grader": {"name": "tests", "passed": False}})
    assert r.json()["decision_quality"] == pytest.approx(0.45)
    after = _arm(router, "coding", model)
    assert after["observations"] == before["observations"] + 1
    assert after["feedback"] == before["feedback"] + 2
    assert after["feedback_by_source"].get("grader:tests", 0) == before["feedback_by_source"].get("grader:tests", 0) + 1
    # unknown event, malformed values, bad JSON
    r = httpx.post(router.url + "/v1/feedback", json={"event_id": "nope", "score": 1})
    assert r.status_code == 404 and "event_id" in r.json()["error"]["message"]
    r = httpx.post(router.url + "/v1/feedback", json={"event_id": eid, "score": 2.0})
    assert r.status_code == 422 and "score" in r.json()["error"]["message"]
    r = httpx.post(router.url + "/v1/feedback", json={"event_id": eid, "rating": {"stars": 9}})
    assert r.status_code == 422 and "stars" in r.json()["error"]["message"]
    r = httpx.post(router.url + "/v1/feedback", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_bad_requests_get_openai_style_errors(router):
    client = router.client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=CODING)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="auto", messages=[])
    assert "messages" in str(e.value)
    r = httpx.post(router.url + "/v1/chat/completions", json={"model": "auto", "messages": CODING},
                   headers={"X-Router-Cost-Weight": "lots"})
    assert r.status_code == 422 and "X-Router-Cost-Weight" in r.json()["error"]["message"]
    assert httpx.get(router.url + "/nowhere").status_code == 404


def test_disable_takes_effect_at_once_and_enable_restores(router):
    client = router.client()
    assert httpx.post(router.url + "/admin/models/claude-opus-4.6/disable", headers=ADMIN).json()["enabled"] is False
    seen = {client.chat.completions.create(model="auto", messages=CODING).model for _ in range(40)}
    assert "claude-opus-4.6" not in seen
    assert _arm(router, "coding", "claude-opus-4.6")["enabled"] is False
    httpx.post(router.url + "/admin/models/claude-opus-4.6/enable", headers=ADMIN)
    assert _arm(router, "coding", "claude-opus-4.6")["enabled"] is True
    assert httpx.post(router.url + "/admin/models/nope/disable", headers=ADMIN).status_code == 404


def test_admin_arms_fields(router):
    arms = httpx.get(router.url + "/admin/arms", headers=ADMIN).json()["categories"]
    assert set(arms) >= {"coding", "reasoning", "science", "computer_use", "general"}
    row = arms["coding"]["gpt-5.4"]
    for key in ("decisions", "feedback", "quality_mean", "quality_sd", "mean_cost_usd", "traffic_share",
                "enabled", "prior"):
        assert key in row
    assert sum(a["traffic_share"] for a in arms["coding"].values()) == pytest.approx(1.0)
    assert arms["computer_use"]["glm-5"]["serves"] is False


def test_restart_restores_posteriors_exactly(simulator, tmp_path):
    r = RouterProc(tmp_path, simulator)
    r.start()
    client = r.client()
    for i in range(60):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": f"Write a Python function number {i}."}])
        httpx.post(r.url + "/v1/feedback", json={"event_id": raw.headers["X-Router-Event-Id"], "score": (i % 5) / 4})
    before = httpx.get(r.url + "/admin/arms", headers=ADMIN).json()
    r.stop()
    r.start()
    after = httpx.get(r.url + "/admin/arms", headers=ADMIN).json()
    r.stop()
    assert after["categories"] == before["categories"]  # the posteriors (upstream health is per process)
    assert sum(a["observations"] for a in before["categories"]["coding"].values()) == 60


def test_bad_config_stops_start_up_naming_the_field(tmp_path):
    cfg = yaml.safe_load(EXAMPLE_CONFIG)
    cfg["models"][1]["input_price"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([*EXE, "serve", "--config", str(path), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "models.1.input_price" in out.stderr


def test_init_writes_a_valid_config(tmp_path):
    path = tmp_path / "router.yaml"
    out = subprocess.run([*EXE, "init", str(path)], capture_output=True, text=True, timeout=30,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr
    from bandit_router.config import load_config

    cfg = load_config(path)
    assert {m.name for m in cfg.models} == MODELS
    assert all(m.base_url == "http://127.0.0.1:9000/v1" for m in cfg.models)
