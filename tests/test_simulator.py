"""The simulated provider: OpenAI wire format checked with the official SDK over loopback, the
grading protocol, correctness rates, drift, failures, truncation, latency and profile files."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Any

import openai
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from bandit_router.features import estimate_tokens, text_tokens
from bandit_router.simulator import (
    CATEGORY_HEADER,
    Profile,
    ProfileError,
    builtin_profile,
    expected_answer,
    grade,
    load_profile,
    make_app,
    parse_answer,
    parse_profile,
    profile_yaml,
)
from bandit_router.simulator.protocol import wrong_answer

CODING = "Write a Python function that merges two sorted lists."


def fast_profile(**changes: Any) -> Profile:
    return builtin_profile().model_copy(update={"latency_scale": 0.0, **changes})


def msgs(text: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


@pytest_asyncio.fixture
async def server(aiohttp_server) -> TestServer:
    return await aiohttp_server(make_app(fast_profile(), seed=0))


@pytest_asyncio.fixture
async def sdk(server: TestServer) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def http(aiohttp_client, server: TestServer) -> TestClient:
    return await aiohttp_client(server)


async def chat(http: TestClient, model: str, text: str, category: str | None = None, **extra: Any) -> dict:
    headers = {CATEGORY_HEADER: category} if category else {}
    resp = await http.post("/v1/chat/completions", json={"model": model, "messages": msgs(text), **extra},
                           headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def set_model(http: TestClient, name: str, body: dict[str, Any], status: int = 200) -> dict:
    resp = await http.post(f"/admin/models/{name}", json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


# --- wire format, via the official SDK -----------------------------------------------------------

@pytest.mark.asyncio
async def test_non_streaming_via_sdk(sdk: openai.AsyncOpenAI) -> None:
    messages = msgs(CODING + "\nEXPECTED: 42", system="You are terse.")
    r = await sdk.chat.completions.create(model="claude-opus-4.6", messages=messages, temperature=0.2, user="u1")
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "claude-opus-4.6"
    assert r.created > 0 and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert parse_answer(choice.message.content) is not None
    u = r.usage
    assert u is not None and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens == estimate_tokens(messages)
    assert u.completion_tokens == text_tokens(choice.message.content)
    assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == 0
    raw = await sdk.chat.completions.with_raw_response.create(model="glm-5", messages=messages)
    assert raw.headers["x-sim-category"] == "coding" and float(raw.headers["x-sim-cost-usd"]) > 0


@pytest.mark.asyncio
async def test_streaming_via_sdk(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(model="gemini-3.1-pro", messages=msgs("Why is the sky blue?"),
                                               stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0] is chunks[-2] and finals[0].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == text_tokens(text)
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + text_tokens(text)
    assert parse_answer(text) in ("correct", "incorrect")
    # without include_usage: no usage chunk
    plain = [c async for c in await sdk.chat.completions.create(model="gpt-5.4", messages=msgs("hi"), stream=True)]
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


@pytest.mark.asyncio
async def test_raw_sse_framing(http: TestClient) -> None:
    resp = await http.post("/v1/chat/completions", json={
        "model": "gpt-5.4", "messages": msgs("hi"), "stream": True, "stream_options": {"include_usage": True}})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = (await resp.text()).split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    assert json.loads(events[-3][6:])["choices"] == []


@pytest.mark.asyncio
async def test_models_and_health(sdk: openai.AsyncOpenAI, http: TestClient) -> None:
    ids = [m.id async for m in sdk.models.list()]
    assert ids == ["gpt-5.4", "claude-opus-4.6", "gemini-3.1-pro", "glm-5"]
    assert (await sdk.models.retrieve("glm-5")).owned_by == "zhipu-ai"
    resp = await http.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_unknown_model_is_openai_404(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        await sdk.chat.completions.create(model="gpt-9", messages=msgs("hi"))
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    assert isinstance(e.value.body, dict) and set(e.value.body) == {"message", "type", "param", "code"}
    assert "gpt-9" in e.value.body["message"]


@pytest.mark.asyncio
async def test_bad_requests_are_400(http: TestClient, sdk: openai.AsyncOpenAI) -> None:
    resp = await http.post("/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error" and set(err) == {"message", "type", "param", "code"}
    resp = await http.post("/v1/chat/completions", json={"model": "gpt-5.4"})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "messages"
    resp = await http.post("/v1/chat/completions", json={"model": "gpt-5.4", "messages": [{"role": "bot"}]})
    assert (await resp.json())["error"]["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError, match="n=1"):
        await sdk.chat.completions.create(model="gpt-5.4", messages=msgs("hi"), n=2)
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        await sdk.chat.completions.create(model="gpt-5.4", messages=msgs("hi"), stream_options={"include_usage": True})
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.chat.completions.create(model="gpt-5.4", messages=msgs("hi"),
                                          extra_headers={CATEGORY_HEADER: "poetry"})
    assert e.value.param == "X-Sim-Category"
    resp = await http.get("/v1/nothing")
    assert resp.status == 404 and "error" in await resp.json()


@pytest.mark.asyncio
async def test_fail_rate_gives_500s(http: TestClient, sdk: openai.AsyncOpenAI) -> None:
    await set_model(http, "gpt-5.4", {"fail_rate": 1.0})
    with pytest.raises(openai.InternalServerError) as e:
        await sdk.chat.completions.create(model="gpt-5.4", messages=msgs("hi"))
    assert e.value.status_code == 500 and e.value.type == "server_error"
    await set_model(http, "gpt-5.4", {"fail_rate": 0.3})
    statuses = await asyncio.gather(*[
        http.post("/v1/chat/completions", json={"model": "gpt-5.4", "messages": msgs(f"q{i}")}) for i in range(400)])
    failed = sum(r.status == 500 for r in statuses)
    assert abs(failed / 400 - 0.3) < 0.07
    state = (await (await http.get("/admin/models")).json())["models"]["gpt-5.4"]
    assert state["requests"] == 401 and state["failures"] == failed + 1 and state["completions"] == 400 - failed


@pytest.mark.asyncio
async def test_hang_rate_holds_the_response_then_504(http: TestClient) -> None:
    await set_model(http, "gpt-5.4", {"hang_rate": 0.5, "hang_s": 0.3})
    loop = asyncio.get_running_loop()

    async def timed(i: int) -> tuple[int, float]:
        t0 = loop.time()
        r = await http.post("/v1/chat/completions", json={"model": "gpt-5.4", "messages": msgs(f"h{i}")})
        return r.status, loop.time() - t0

    out = await asyncio.gather(*[timed(i) for i in range(60)])
    hung = [t for status, t in out if status == 504]
    assert 15 <= len(hung) <= 45 and min(hung) >= 0.29
    assert all(status == 200 for status, _ in out if status != 504)
    state = (await (await http.get("/admin/models")).json())["models"]["gpt-5.4"]
    assert state["hangs"] == len(hung) and state["hang_rate"] == 0.5


# --- grading protocol and correctness ------------------------------------------------------------

def test_grade_protocol() -> None:
    assert expected_answer(msgs("Pick one.\nEXPECTED: C")) == "C"
    assert expected_answer(msgs("no hidden answer")) is None
    assert expected_answer([{"role": "user", "content": "EXPECTED: 1"}, {"role": "user", "content": "x"}]) is None
    assert grade("blah\nANSWER: c.", "C") == 1.0 and grade("ANSWER: B", "C") == 0.0
    assert grade("ANSWER: correct", None) == 1.0 and grade("ANSWER: incorrect", None) == 0.0
    assert grade("no answer line", "C") == 0.0 and grade(None, None) == 0.0
    assert grade("ANSWER: 1\nmore\nANSWER: 2", "2") == 1.0  # the last line counts
    rng = random.Random(0)
    for expected in ["A", "d", "yes", "False", "42", "-7", "1,024", "Paris", "unknown"]:
        for _ in range(20):
            assert grade(f"ANSWER: {wrong_answer(expected, rng)}", expected) == 0.0


@pytest.mark.asyncio
async def test_expected_answers_round_trip(http: TestClient) -> None:
    seen = {True: 0, False: 0}
    for i in range(60):
        expected = "ABCD"[i % 4]
        body = await chat(http, "gpt-5.4", f"Question {i}?\nA) x\nB) y\nC) z\nD) w\nEXPECTED: {expected}", "science")
        answer = parse_answer(body["choices"][0]["message"]["content"])
        assert answer in "ABCD" and len(answer) == 1
        seen[grade(body["choices"][0]["message"]["content"], expected) == 1.0] += 1
    assert seen[True] > 40 and seen[False] > 0


@pytest.mark.asyncio
async def test_correctness_converges_to_profile(http: TestClient) -> None:
    """~2,000 requests, 400 per category on one model: each rate within 3.5 sd of the profile."""
    model, n = "claude-opus-4.6", 400
    profile = builtin_profile().models[model]
    rates = {}
    for category in profile.quality:
        bodies = await asyncio.gather(*[chat(http, model, f"task {category} {i}\nEXPECTED: {i}", category)
                                        for i in range(n)])
        rates[category] = sum(grade(b["choices"][0]["message"]["content"], str(i))
                              for i, b in enumerate(bodies)) / n
    for category, rate in rates.items():
        p = profile.p(category)
        assert p is not None and abs(rate - p) < 3.5 * math.sqrt(p * (1 - p) / n) + 1e-9, (category, rate, p)
    state = (await (await http.get("/admin/models")).json())["models"][model]
    assert state["requests"] == 5 * n
    assert all(state["by_category"][c]["correct"] == round(rates[c] * n) for c in rates)


@pytest.mark.asyncio
async def test_unserved_category_and_inferred_category(http: TestClient, aiohttp_client) -> None:
    bodies = [await chat(http, "glm-5", f"Click the settings button {i}", "computer_use") for i in range(30)]
    assert all(parse_answer(b["choices"][0]["message"]["content"]) == "incorrect" for b in bodies)
    resp = await http.post("/v1/chat/completions", json={"model": "gpt-5.4", "messages": msgs(CODING)})
    assert resp.headers["x-sim-category"] == "coding"
    strict = await aiohttp_client(make_app(fast_profile(unserved="error")))
    resp = await strict.post("/v1/chat/completions", json={"model": "glm-5", "messages": msgs("x")},
                             headers={CATEGORY_HEADER: "computer_use"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "unsupported_category"


@pytest.mark.asyncio
async def test_deterministic_given_seed(aiohttp_client) -> None:
    async def run(seed: int) -> list[str]:
        client = await aiohttp_client(make_app(fast_profile(), seed=seed))
        return [(await chat(client, "glm-5", f"q {i % 3}"))["choices"][0]["message"]["content"] for i in range(20)]
    first = await run(7)
    assert first == await run(7) and first != await run(8)


# --- drift admin ---------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_drift_takes_effect_at_once(http: TestClient) -> None:
    async def right(n: int) -> int:
        bodies = [await chat(http, "gemini-3.1-pro", f"d{i}", "coding") for i in range(n)]
        return sum(parse_answer(b["choices"][0]["message"]["content"]) == "correct" for b in bodies)
    state = await set_model(http, "gemini-3.1-pro", {"quality": {"coding": 0.0}})
    assert state["quality"]["coding"] == 0.0 and state["profile_quality"]["coding"] == 0.76
    assert await right(50) == 0
    await set_model(http, "gemini-3.1-pro", {"quality": {"coding": 1.0}, "quality_scale": 0.5})
    assert 10 < await right(60) < 50
    state = await set_model(http, "gemini-3.1-pro", {"quality_scale": 1.0, "price": {"output": 6.0}})
    assert state["price"] == {"input": 2.0, "output": 6.0, "cached_input": None}
    assert await right(30) == 30
    err = await set_model(http, "gemini-3.1-pro", {"quality": {"coding": 1.5}}, status=400)
    assert err["error"]["param"] == "quality.coding"
    err = await set_model(http, "gemini-3.1-pro", {"quality": {"poetry": 0.5}}, status=400)
    assert "poetry" in err["error"]["message"]
    assert (await set_model(http, "gemini-3.1-pro", {"speed": 1}, status=400))["error"]["param"] == "speed"
    await set_model(http, "nope", {"fail_rate": 0.1}, status=404)
    await set_model(http, "gemini-3.1-pro", {"available": False})
    resp = await http.post("/v1/chat/completions", json={"model": "gemini-3.1-pro", "messages": msgs("x")})
    assert resp.status == 404
    assert (await http.post("/admin/reset")).status == 200
    state = (await (await http.get("/admin/models")).json())["models"]["gemini-3.1-pro"]
    assert state["available"] and state["requests"] == 0 and state["price"]["output"] == 12.0


# --- tokens, truncation, caching, latency --------------------------------------------------------

@pytest.mark.asyncio
async def test_max_tokens_truncates_with_length(sdk: openai.AsyncOpenAI) -> None:
    r = await sdk.chat.completions.create(model="gpt-5.4", messages=msgs(CODING), max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage is not None and r.usage.completion_tokens == 5
    assert grade(r.choices[0].message.content, None) == 0.0  # cut before its ANSWER line
    r = await sdk.chat.completions.create(model="gpt-5.4", messages=msgs(CODING), max_completion_tokens=7)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    stream = await sdk.chat.completions.create(model="gpt-5.4", messages=msgs(CODING), max_tokens=9, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 9
    r = await sdk.chat.completions.create(model="gpt-5.4", messages=msgs(CODING), max_tokens=100_000, stop=["ANSWER"])
    assert r.choices[0].finish_reason == "stop" and "ANSWER" not in r.choices[0].message.content


@pytest.mark.asyncio
async def test_output_lengths_follow_profile(http: TestClient) -> None:
    bodies = await asyncio.gather(*[chat(http, "glm-5", f"s{i}", "science") for i in range(200)])
    mean = sum(b["usage"]["completion_tokens"] for b in bodies) / len(bodies)
    assert abs(mean / builtin_profile().output_tokens("glm-5", "science").mean - 1) < 0.1


@pytest.mark.asyncio
async def test_prompt_cache_reports_cached_tokens(sdk: openai.AsyncOpenAI) -> None:
    system = "Reference manual. " * 400  # ~1,800 tokens
    first = await sdk.chat.completions.create(model="gpt-5.4", messages=msgs("q1", system))
    second = await sdk.chat.completions.create(model="gpt-5.4", messages=msgs("q2", system))
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached <= second.usage.prompt_tokens


@pytest.mark.asyncio
async def test_latency_is_simulated(aiohttp_server) -> None:
    profile = builtin_profile()
    profile.models["gpt-5.4"].latency.ttft_ms = 60.0
    profile.models["gpt-5.4"].latency.sigma = 0.0  # every answer at the median
    server = await aiohttp_server(make_app(profile))
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test", max_retries=0)
    start = time.monotonic()
    stream = await client.chat.completions.create(model="gpt-5.4", messages=msgs("hi"), stream=True)
    async for _ in stream:
        break
    assert time.monotonic() - start >= 0.055
    await client.close()


# --- profiles ------------------------------------------------------------------------------------

def test_builtin_profile_matches_article() -> None:
    p = builtin_profile()
    assert list(p.models) == ["gpt-5.4", "claude-opus-4.6", "gemini-3.1-pro", "glm-5"]
    q = {m: {c: s.p for c, s in spec.quality.items()} for m, spec in p.models.items()}
    assert q["gpt-5.4"] == {"computer_use": 0.75, "coding": 0.78, "science": 0.928, "reasoning": 0.733,
                            "general": 0.82}
    assert q["claude-opus-4.6"]["coding"] == 0.808 and q["gemini-3.1-pro"]["science"] == 0.943
    assert q["gemini-3.1-pro"]["reasoning"] == 0.771 and q["glm-5"]["computer_use"] is None
    glm = p.models["glm-5"]
    assert glm.price.input == 1.0 and "Assumed" in (glm.price.assumption or "")
    assert "AIME" in (glm.quality["reasoning"].assumption or "") and glm.quality["computer_use"].assumption
    assert [(m.price.input, m.price.output) for m in p.models.values()] == [(2.5, 20), (5, 25), (2, 12), (1, 3.2)]
    assert p.models["gemini-3.1-pro"].quality["computer_use"].assumption  # "~71%"
    assert all(m.quality["general"].assumption for m in p.models.values())
    assert parse_profile(json.loads(json.dumps(p.model_dump(mode="json")))) == p


def test_profile_files(tmp_path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text("name: tiny\nmodels:\n  m1:\n    quality: {coding: 0.9, general: {p: 0.5, assumption: guess}}\n"
                    "    price: {input: 1, output: 2}\n")
    p = load_profile(good)
    assert p.models["m1"].p("coding") == 0.9 and p.models["m1"].p("science") is None
    assert p.models["m1"].quality["general"].assumption == "guess"
    (tmp_path / "p.json").write_text(json.dumps(p.model_dump(mode="json")))
    assert load_profile(tmp_path / "p.json") == p
    (tmp_path / "builtin.yaml").write_text(profile_yaml(builtin_profile()))
    assert load_profile(tmp_path / "builtin.yaml") == builtin_profile()
    cases = {
        "models:\n  m1:\n    quality: {coding: 1.5}\n    price: {input: 1, output: 2}\n": "models.m1.quality.coding.p",
        "models:\n  m1:\n    quality: {poetry: 0.5}\n    price: {input: 1, output: 2}\n": "models.m1.quality.poetry",
        "models:\n  m1:\n    quality: {}\n    price: {input: -1, output: 2}\n": "models.m1.price.input",
        "models:\n  m1:\n    quality: {}\n    price: {input: 1, output: 2}\n    colour: red\n": "models.m1.colour",
        "latency_scale: -1\nmodels: {}\n": "latency_scale",
        "models: [1, 2]\n": "models",
        "models: {a: 1\n": "not valid YAML",
        "- just a list\n": "top level",
    }
    for text, field in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ProfileError, match=field.replace(".", r"\.")):
            load_profile(bad)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.yaml")


def test_latency_is_a_log_normal_distribution_per_answer() -> None:
    import math
    import statistics

    from bandit_router.simulator.engine import Simulator

    sim = Simulator(builtin_profile(), seed=5)
    lat = sim.profile.models["glm-5"].latency
    assert lat.sigma > 0
    ttft = [sim.complete("glm-5", msgs(f"q{i}")).ttft_s for i in range(2000)]
    logs = [math.log(t) for t in ttft]
    assert statistics.median(ttft) == pytest.approx(lat.ttft_ms / 1000, rel=0.05)
    assert statistics.stdev(logs) == pytest.approx(lat.sigma, rel=0.08)
    # the models differ: a fast one and a slow one (what deadline routing needs)
    p = sim.profile.models
    assert p["claude-opus-4.6"].latency.ttft_ms >= 3 * p["glm-5"].latency.ttft_ms
