"""The Anthropic upstream driven through the router with the official openai client (real loopback HTTP)."""

from __future__ import annotations

import openai
import pytest
import pytest_asyncio
from anthropic_server import REQUESTS, make_anthropic_app  # tests/ is on sys.path under pytest

from bandit_router.config import parse_config
from bandit_router.server import make_app


@pytest_asyncio.fixture
async def routed(aiohttp_server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", "test-key")
    upstream_app = make_anthropic_app(api_key="test-key")
    upstream = await aiohttp_server(upstream_app)
    cfg = parse_config({"models": [{"name": "claude-opus-4.6", "provider": "anthropic",
                                    "base_url": f"http://127.0.0.1:{upstream.port}",
                                    "upstream_model": "claude-opus-4-6", "api_key_env": "ANTHROPIC_TEST_KEY",
                                    "input_price": 5.0, "output_price": 25.0}], "bandit": {"seed": 0}})
    router = await aiohttp_server(make_app(cfg, db_path=tmp_path / "a.db"))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.port}/v1", api_key="x", max_retries=0)
    yield client, upstream_app
    await client.close()


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to Ada."},
            {"role": "assistant", "content": "Hello?"}, {"role": "user", "content": "Again, please."}]


@pytest.mark.asyncio
async def test_non_streaming_through_the_router(routed):
    client, upstream = routed
    raw = await client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, max_tokens=50,
                                                                   temperature=0.2, stop=["STOP"])
    c = raw.parse()
    assert c.model == "claude-opus-4.6" and raw.headers["X-Router-Model"] == "claude-opus-4.6"
    assert c.choices[0].message.content and c.choices[0].finish_reason in ("stop", "length")
    assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0
    assert c.model_extra["router"]["cost_usd"] == pytest.approx(
        (c.usage.prompt_tokens * 5.0 + c.usage.completion_tokens * 25.0) / 1e6)
    sent = upstream[REQUESTS][-1]
    assert sent["system"] == "Be brief." and sent["model"] == "claude-opus-4-6"
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["max_tokens"] == 50 and sent["stop_sequences"] == ["STOP"]


@pytest.mark.asyncio
async def test_streaming_through_the_router(routed):
    client, _ = routed
    stream = await client.chat.completions.create(model="auto", messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text and finish == "stop" and usage is not None and usage.completion_tokens > 0
