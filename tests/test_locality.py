"""Data locality: the sensitive-data detector, and proof over loopback that nothing restricted to
``local`` reaches a non-local upstream, which records every byte it receives: not the first choice,
not a retry, not a fallback, not a stream, not route-only, not a judge."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from aiohttp import web
from fleet import sim_set

from bandit_router.config import ConfigError, parse_config
from bandit_router.locality import SensitiveDataDetector, locality_mask, request_text
from bandit_router.server import make_app
from bandit_router.server.keys import SERVICE

# -- the detector ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kinds", [
    ("write to jane.doe+work@example.co.uk today", ["email"]),
    ("call +44 20 7946 0958", ["phone"]),
    ("call (555) 123-4567 now", ["phone"]),
    ("555.123.4567", ["phone"]),
    ("card 4111 1111 1111 1111 exp 12/29", ["card"]),
    ("card 4111-1111-1111-1111", ["card"]),
    ("ssn 123-45-6789", ["national_id"]),
    ("NI number AB 12 34 56 C", ["national_id"]),
    ("card 4111 1111 1111 1112", []),  # fails the Luhn check
    ("ssn 000-12-3456", []),  # not a valid SSN area
    ("version 1.2.3 released 2024-01-15, build 12345678901234", []),
    ("def f(x): return x * 2  # ranges 100-200-300", []),
    ("the ip is 192.168.1.100 and the price 3.50", []),
])
def test_builtin_detectors(text, kinds):
    assert SensitiveDataDetector().find(text) == kinds


def test_custom_patterns_and_a_pattern_that_runs_out_of_time_counts_as_sensitive():
    d = SensitiveDataDetector(detect=[], patterns={"employee": r"\bEMP-\d{6}\b", "slow": r"^(a|a)*$"}, timeout_s=0.01)
    assert d.find("ticket for EMP-123456") == ["employee"]
    assert d.find("nothing here") == []
    assert d.find("a" * 40 + "!") == ["slow"]  # catastrophic backtracking: timed out, kept local


def test_bad_detector_settings_name_the_problem():
    with pytest.raises(ValueError, match="unknown.*passport"):
        SensitiveDataDetector(detect=["passport"])
    with pytest.raises(ValueError, match=r"patterns\.bad: not a valid regular expression"):
        SensitiveDataDetector(patterns={"bad": "(("})


def test_request_text_reads_every_string_sent_upstream():
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "mail a@b.io"}, {"type": "image_url"}]}]
    assert {"be brief", "mail a@b.io", "image_url", "content"} <= set(request_text(msgs).split("\n"))
    assert SensitiveDataDetector().find_in(msgs) == ["email"]
    # personal data outside the message text: tool-call arguments, a name, a tool definition
    d = SensitiveDataDetector()
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "send", "arguments": '{"to": "jane@corp.io"}'}}]}
    assert d.find_in({"messages": [call]}) == ["email"]
    assert d.find_in({"messages": [{"role": "user", "name": "ssn 123-45-6789", "content": "hi"}]}) == ["national_id"]
    tool = {"type": "function", "function": {"name": "f", "description": "call +44 20 7946 0958"}}
    assert d.find_in({"messages": [{"role": "user", "content": "hi"}], "tools": [tool]}) == ["phone"]
    # numbers and keys are sent upstream too (the Anthropic adapter turns numbers into text)
    assert d.find_in({"messages": [{"role": "user", "content": [{"type": "text", "text": 4111111111111111}]}]}) \
        == ["card"]
    assert d.find_in({"messages": [{"role": "user", "content": "hi"}], "metadata": {"jane@corp.io": 1}}) == ["email"]
    # not scanned: provider ids, opaque data; not personal: example domains, digit runs inside ids
    assert d.find_in({"messages": [
        {"role": "tool", "tool_call_id": "call_1732795950002", "content": "done"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,4111111111111111"}},
            {"type": "input_audio", "input_audio": {"data": "4111111111111111"}}]},
        {"role": "user", "content": "write to someone@example.com or a@b.test", "name": "u53033190766045b1"}],
        "user": "a41111111111111110f"}) == []
    # our own hints are not sent upstream: not scanned
    assert d.find_in({"messages": [{"role": "user", "content": "hi"}], "router": {"reference": {"a": "x@y.io"}}}) == []
    assert locality_mask(["local", None, "eu", "local"], "local").tolist() == [True, False, False, True]


def test_config_refuses_a_sensitive_route_with_no_model_there():
    cfg = {"models": [{"name": "a", "base_url": "http://x", "input_price": 1, "output_price": 1}],
           "locality": {"sensitive": {"route_to": "local"}}}
    with pytest.raises(ConfigError, match="no model has locality 'local'"):
        parse_config(cfg)


# -- end to end: a recording upstream --------------------------------------------------------------

SECRET = "jane.doe@corpmail.io"  # triggers the detector
MARK = "LOCAL-ONLY-7f3a"  # in every request marked local by a hint


class Recorder:
    """An OpenAI-compatible upstream that keeps every byte it receives (headers and body)."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.raw.append(b"".join(f"{k}: {v}\n".encode() for k, v in request.headers.items()) + b"\n" + body)
        return web.json_response({
            "id": "r", "object": "chat.completion", "created": 0, "model": "cloud",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Score: 9"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})

    def saw(self, text: str) -> bool:
        return any(text.encode() in r for r in self.raw)


@pytest_asyncio.fixture
async def fleet(sim, aiohttp_server, aiohttp_client, tmp_path):
    rec = Recorder()
    up = web.Application()
    up.router.add_post("/v1/chat/completions", rec.chat)
    cloud = await aiohttp_server(up)
    strong = {"general": {"quality": 0.99, "strength": 1000}, "coding": {"quality": 0.99, "strength": 1000}}
    weak = {"general": {"quality": 0.2, "strength": 1000}, "coding": {"quality": 0.2, "strength": 1000}}
    models = [
        # the cloud models are the router's clear favourites: only the restriction keeps data off them
        {"name": "cloud-a", "base_url": f"http://127.0.0.1:{cloud.port}/v1", "input_price": 0.1, "output_price": 0.1,
         "priors": strong, "locality": "us"},
        {"name": "cloud-b", "base_url": f"http://127.0.0.1:{cloud.port}/v1", "input_price": 0.1, "output_price": 0.1,
         "priors": strong},
        # the simulator hosts it under the name glm-5; here it plays the on-premises model
        {"name": "onprem", "upstream_model": "glm-5", "base_url": f"http://127.0.0.1:{sim.port}/v1",
         "input_price": 1.0, "output_price": 1.0, "priors": weak, "locality": "local"},
    ]
    cfg = parse_config({
        "models": models, "bandit": {"seed": 2, "cost_weight": 0.0},
        "reliability": {"retries": 1, "backoff_s": 0.01, "fallbacks": 2},
        "locality": {"sensitive": {"route_to": "local", "patterns": {"ticket": r"\bTCK-\d{4}\b"}}},
        "grading": {"graders": {"*": [{"type": "llm_judge", "model": "cloud-b", "alternates": ["cloud-a"],
                                           "name": "judge"}]}},
    })
    app = make_app(cfg, db_path=tmp_path / "loc.db", admin_local_only=True)
    client = await aiohttp_client(app)
    return client, app, rec


def _chat(content: str, **extra):
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.asyncio
async def test_nothing_marked_local_reaches_a_non_local_upstream(fleet, sim):
    client, app, rec = fleet

    # control: an ordinary request goes to the favourite cloud model, which records it (and its judge call)
    r = await client.post("/v1/chat/completions", json=_chat("What is the capital of France? ctrl-1"))
    assert r.status == 200 and r.headers["X-Router-Model"].startswith("cloud")
    assert rec.saw("ctrl-1") and "X-Router-Locality" not in r.headers

    # marked local by the body hint, by the header, and found by the detector (built-in and custom)
    r = await client.post("/v1/chat/completions", json=_chat(f"summarise {MARK}-1", router={"locality": "local"}))
    assert r.status == 200 and r.headers["X-Router-Model"] == "onprem" and r.headers["X-Router-Locality"] == "local"
    r = await client.post("/v1/chat/completions", json=_chat(f"summarise {MARK}-2"),
                          headers={"X-Router-Locality": "local"})
    assert r.status == 200 and r.headers["X-Router-Model"] == "onprem"
    r = await client.post("/v1/chat/completions", json=_chat(f"Draft a reply to {SECRET} about the invoice"))
    body = await r.json()
    assert r.status == 200 and body["router"]["model"] == "onprem"
    assert body["router"]["locality"] == {"required": "local", "detected": ["email"]}
    r = await client.post("/v1/chat/completions", json=_chat("status of TCK-4821?"))
    assert r.status == 200 and (await r.json())["router"]["locality"]["detected"] == ["ticket"]

    # streamed
    r = await client.post("/v1/chat/completions", json=_chat(f"stream for {SECRET}", stream=True))
    assert r.status == 200 and r.headers["X-Router-Model"] == "onprem"
    assert (await r.read()).endswith(b"data: [DONE]\n\n")

    # route-only
    r = await client.post("/v1/route", json={"messages": [{"role": "user", "content": f"for {SECRET}"}]})
    assert r.status == 200 and (await r.json())["model"] == "onprem"

    # a pass-through to a cloud model is refused, not sent
    r = await client.post("/v1/chat/completions", json={**_chat(f"{MARK}-3 {SECRET}"), "model": "cloud-b"})
    assert r.status == 422 and (await r.json())["error"]["code"] == "locality_unavailable"

    # the local model fails: retried, but never falls back to the cloud; it fails closed
    await sim_set(sim, "glm-5", {"fail_rate": 1.0})
    r = await client.post("/v1/chat/completions", json=_chat(f"{MARK}-4 mail {SECRET}"))
    assert r.status == 502, await r.text()
    # ... also once its breaker is open (the router fails open only within the locality)
    for i in range(6):
        await client.post("/v1/chat/completions", json=_chat(f"{MARK}-5-{i}", router={"locality": "local"}))
    r = await client.post("/v1/chat/completions", json=_chat(f"{MARK}-6", router={"locality": "local"}))
    assert r.status == 502 and r.headers.get("X-Router-Model") in (None, "onprem")
    await sim_set(sim, "glm-5", {"fail_rate": 0.0})

    # disabled: no local model left, a clear error
    assert (await client.post("/admin/models/onprem/disable")).status == 200
    r = await client.post("/v1/chat/completions", json=_chat(f"{MARK}-7", router={"locality": "local"}))
    err = (await r.json())["error"]
    assert r.status == 503 and err["code"] == "locality_unavailable" and "'local'" in err["message"]
    # a locality no model has
    r = await client.post("/v1/chat/completions", json=_chat("x", router={"locality": "mars"}))
    assert r.status == 422 and "no model has locality 'mars'" in (await r.json())["error"]["message"]

    await app[SERVICE].settle()
    await asyncio.sleep(0)
    judge = app[SERVICE].grading.stats["judge"]
    assert judge["withheld"] >= 5 and judge["graded"] >= 1  # local answers were never sent to the cloud judge
    assert not rec.saw(MARK) and not rec.saw(SECRET) and not rec.saw("TCK-4821")
    assert not rec.saw("jane.doe")  # not even part of it
    metrics = await (await client.get("/metrics")).text()
    assert 'bandit_router_locality_decisions_total{locality="local"}' in metrics


@pytest.mark.asyncio
async def test_headers_tool_calls_and_asked_localities_cannot_route_around_the_restriction(fleet):
    """Found in review: /v1/route ignored X-Router-Locality; the detector read only message text;
    a request that asked for a cloud locality skipped the detector."""
    client, app, rec = fleet
    r = await client.post("/v1/route", json={"messages": [{"role": "user", "content": "plain question"}]},
                          headers={"X-Router-Locality": "local"})
    assert r.status == 200 and (await r.json())["model"] == "onprem" and r.headers["X-Router-Locality"] == "local"
    r = await client.post("/v1/route", json={"messages": [{"role": "user", "content": "q"}]},
                          headers={"X-Router-Locality": "no such!"})
    assert r.status == 422

    # personal data only in a tool call's arguments, and only in a tool's definition
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "mail", "arguments": f'{{"to": "{SECRET}"}}'}}]}
    msgs = [{"role": "user", "content": f"{MARK}-t1 send it"}, call,
            {"role": "tool", "tool_call_id": "c1", "content": "sent"}]
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": msgs})
    body = await r.json()
    assert r.status == 200 and body["router"]["model"] == "onprem"
    assert body["router"]["locality"]["detected"] == ["email"]
    tools = [{"type": "function", "function": {"name": "lookup", "description": f"account of {SECRET}",
                                                "parameters": {"type": "object", "properties": {}}}}]
    r = await client.post("/v1/chat/completions", json={**_chat(f"{MARK}-t2"), "tools": tools})
    assert r.status == 200 and (await r.json())["router"]["model"] == "onprem"

    # a request that asks for the cloud region but holds personal data is refused, not sent there
    for how in ({"json": _chat(f"{MARK}-t3 {SECRET}", router={"locality": "us"})},
                {"json": _chat(f"{MARK}-t4 {SECRET}"), "headers": {"X-Router-Locality": "us"}}):
        r = await client.post("/v1/chat/completions", **how)
        err = (await r.json())["error"]
        assert r.status == 422 and err["code"] == "locality_conflict" and "personal data (email)" in err["message"]
    r = await client.post("/v1/route", json={"messages": [{"role": "user", "content": SECRET}], "locality": "us"})
    assert r.status == 422
    # without personal data the asked region is honoured
    r = await client.post("/v1/chat/completions", json=_chat("nothing personal", router={"locality": "us"}))
    assert r.status == 200 and (await r.json())["router"]["model"] == "cloud-a"

    await app[SERVICE].settle()
    assert not rec.saw(MARK) and not rec.saw(SECRET) and not rec.saw("jane.doe")
    app[SERVICE].books.run()  # (what the answers left to do: any other endpoint would run it first)
    assert not app[SERVICE]._inflight  # nothing refused or answered was left in flight
