"""A local server speaking Anthropic's Messages wire format (``POST /v1/messages``), for tests.

It validates requests the way the real API does (the key in ``x-api-key``, or ``Authorization:
Bearer`` as the official SDK 2.x sends it; an ``anthropic-version`` header; required
``max_tokens``, user/assistant alternation starting with the user, ``system`` only at the top
level, tool_use/tool_result pairing, no unknown fields) and answers deterministically:

* text: ``"Echo: <last user text>"`` (or ``"Tool said: <result>"`` after tool results), cut at the
  first stop sequence (``stop_sequence``) or after ``max_tokens`` words (``max_tokens``);
* tool_use when tools are given and the last user text says "use the tool" (one call to the first
  tool, or the ``tool_choice`` tool) or "use the tools" (one call per tool, unless parallel tool
  use is disabled); ``tool_choice`` any/tool forces a call, none forbids one;
* streaming in Anthropic's SSE event sequence; "fail midway" in the prompt sends an ``error``
  event after the first text delta.

``app[REQUESTS]`` records every request body; push ``(status, message)`` onto ``app[FAILURES]``
to make the next requests fail with Anthropic's error shape. Tokens are whitespace-separated words.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import orjson
from aiohttp import web

REQUESTS = web.AppKey("anthropic_requests", list)
FAILURES = web.AppKey("anthropic_failures", list)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}
FIELDS = {"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "stream",
          "tools", "tool_choice", "metadata", "thinking", "service_tier"}
MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class Invalid(Exception):
    pass


def error_response(status: int, message: str, request_id: str) -> web.Response:
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers={"request-id": request_id})


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise Invalid(message)


def _text_blocks(value: Any, where: str) -> None:
    _check(isinstance(value, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                           and isinstance(b.get("text"), str) for b in value),
           f"{where}: Input should be a valid string or a list of text blocks")


def _block(b: Any, role: str, where: str, previous_tool_ids: set[str]) -> None:
    _check(isinstance(b, dict) and isinstance(b.get("type"), str), f"{where}: Input should be a valid content block")
    kind = b["type"]
    if kind == "text":
        _check(isinstance(b.get("text"), str) and bool(b["text"].strip()),
               "messages: text content blocks must contain non-whitespace text")
    elif kind == "image":
        src = b.get("source") or {}
        _check(role == "user" and src.get("type") == "base64" and src.get("media_type") in MEDIA_TYPES
               and isinstance(src.get("data"), str), f"{where}.source: invalid image source")
    elif kind == "tool_use":
        _check(role == "assistant", f"{where}: tool_use blocks are only allowed in assistant messages")
        _check(isinstance(b.get("id"), str) and isinstance(b.get("name"), str) and isinstance(b.get("input"), dict),
               f"{where}: tool_use blocks need id, name and an input object")
    elif kind == "tool_result":
        _check(role == "user", f"{where}: tool_result blocks are only allowed in user messages")
        _check(b.get("tool_use_id") in previous_tool_ids,
               f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {b.get('tool_use_id')}. Each "
               "`tool_result` block must have a corresponding `tool_use` block in the previous message.")
        if "content" in b and not isinstance(b["content"], str):
            _text_blocks(b["content"], f"{where}.content")
    else:
        raise Invalid(f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the expected tags")


def validate(body: Any) -> None:
    """Raise :class:`Invalid` with the API's message where the real Messages API would answer 400."""
    _check(isinstance(body, dict), "Input should be a valid dictionary")
    for key in body:
        _check(key in FIELDS, f"{key}: Extra inputs are not permitted")
    _check(isinstance(body.get("model"), str) and bool(body["model"]), "model: Field required")
    mt = body.get("max_tokens")
    _check(isinstance(mt, int) and not isinstance(mt, bool), "max_tokens: Field required")
    _check(mt >= 1, "max_tokens: Input should be greater than or equal to 1")
    if "system" in body and not isinstance(body["system"], str):
        _text_blocks(body["system"], "system")
    for key, hi in (("temperature", 1.0), ("top_p", 1.0)):
        v = body.get(key)
        _check(v is None or (isinstance(v, int | float) and 0 <= v <= hi), f"{key}: must be between 0 and {hi:g}")
    stops = body.get("stop_sequences", [])
    _check(isinstance(stops, list) and all(isinstance(s, str) for s in stops), "stop_sequences: list of strings")
    _check(isinstance(body.get("stream", False), bool), "stream: Input should be a valid boolean")
    _check(isinstance(body.get("metadata", {}), dict), "metadata: Input should be a valid dictionary")
    tools = body.get("tools", [])
    _check(isinstance(tools, list), "tools: Input should be a valid list")
    for i, t in enumerate(tools):
        _check(isinstance(t, dict) and TOOL_NAME.match(str(t.get("name", ""))) is not None,
               f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        _check(isinstance(t.get("input_schema"), dict) and t["input_schema"].get("type") == "object",
               f"tools.{i}.input_schema: Input should be an object schema")
        for key in t:
            _check(key in {"name", "description", "input_schema", "cache_control", "type"},
                   f"tools.{i}.{key}: Extra inputs are not permitted")
    if "tool_choice" in body:
        tc = body["tool_choice"]
        _check(isinstance(tc, dict) and tc.get("type") in ("auto", "any", "tool", "none"),
               "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        _check(bool(tools), "tool_choice may only be specified while providing tools")
        _check(tc["type"] != "tool" or tc.get("name") in {t["name"] for t in tools},
               "tool_choice.name: must name one of the tools")
    messages = body.get("messages")
    _check(isinstance(messages, list) and bool(messages), "messages: Field required (a non-empty list)")
    tool_ids: set[str] = set()
    for i, m in enumerate(messages):
        _check(isinstance(m, dict), f"messages.{i}: Input should be a valid dictionary")
        role = m.get("role")
        _check(role != "system", 'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                                 'parameter, not "system" as an input message role.')
        _check(role in ("user", "assistant"), f"messages.{i}.role: Input should be 'user' or 'assistant'")
        _check(i > 0 or role == "user", 'messages: first message must use the "user" role')
        _check(i == 0 or messages[i - 1].get("role") != role,
               f'messages: roles must alternate between "user" and "assistant", but found multiple "{role}" roles '
               "in a row")
        content = m.get("content")
        last_assistant = i == len(messages) - 1 and role == "assistant"
        _check((isinstance(content, str) and (bool(content) or last_assistant))
               or (isinstance(content, list) and bool(content)),
               f"messages.{i}: all messages must have non-empty content except for the optional final assistant "
               "message")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) and content else content or []
        for j, b in enumerate(blocks):
            _block(b, role, f"messages.{i}.content.{j}", tool_ids)
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        _check(blocks[:len(results)] == [b for b in blocks if b["type"] == "tool_result"],
               f"messages.{i}: tool_result blocks must come first in the content")
        _check(role == "assistant" or set(results) == tool_ids,
               f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
               f"{', '.join(sorted(tool_ids - set(results)))}")
        tool_ids = {b["id"] for b in blocks if b["type"] == "tool_use"}
        if last_assistant and blocks:
            _check(blocks[-1]["type"] != "text" or blocks[-1]["text"] == blocks[-1]["text"].rstrip(),
                   "messages: final assistant content cannot end with trailing whitespace")


# -- answers ------------------------------------------------------------------------------------
def _words(text: str) -> int:
    return len(text.split())


def _all_text(body: dict[str, Any]) -> str:
    """Every piece of prompt text: system, text blocks, tool results and tool inputs."""
    system = body.get("system") or ""
    parts = [system if isinstance(system, str) else " ".join(b["text"] for b in system)]
    for m in body["messages"]:
        blocks = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        for b in blocks:
            if b["type"] == "text":
                parts.append(b["text"])
            elif b["type"] == "tool_use":
                parts.append(orjson.dumps(b["input"]).decode())
            elif b["type"] == "tool_result":
                c = b.get("content", "")
                parts.append(c if isinstance(c, str) else " ".join(x["text"] for x in c))
    return " ".join(parts)


def _last_user(body: dict[str, Any]) -> tuple[str, list[str]]:
    """The last user message's text, and the contents of its tool results."""
    m = next(m for m in reversed(body["messages"]) if m["role"] == "user")
    if isinstance(m["content"], str):
        return m["content"], []
    texts = [b["text"] for b in m["content"] if b["type"] == "text"]
    results = []
    for b in m["content"]:
        if b["type"] == "tool_result":
            c = b.get("content", "")
            results.append(c if isinstance(c, str) else " ".join(x["text"] for x in c))
    return " ".join(texts), results


def _tool_input(schema: dict[str, Any], text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") if isinstance(prop, dict) else None
        out[key] = {"string": text, "integer": _words(text), "number": float(_words(text)), "boolean": True}.get(
            str(kind))
    return out


def answer(body: dict[str, Any], msg_id: str) -> dict[str, Any]:
    """The Message the server answers ``body`` with (deterministic)."""
    text, results = _last_user(body)
    tools, tc = body.get("tools") or [], body.get("tool_choice") or {"type": "auto"}
    asked = "use the tool" in text.lower()
    content: list[dict[str, Any]] = []
    if tools and tc["type"] != "none" and (asked or tc["type"] in ("any", "tool")):
        chosen = [t for t in tools if t["name"] == tc.get("name")] if tc["type"] == "tool" else tools
        if "use the tools" not in text.lower() or tc.get("disable_parallel_tool_use"):
            chosen = chosen[:1]
        content.append({"type": "text", "text": "I'll use the tool."})
        for k, t in enumerate(chosen):
            tid = "toolu_" + hashlib.sha1(f"{msg_id}:{k}".encode()).hexdigest()[:24]
            content.append({"type": "tool_use", "id": tid, "name": t["name"], "input": _tool_input(t["input_schema"],
                                                                                                   text)})
        stop_reason, stop_sequence = "tool_use", None
        out_tokens = sum(_words(orjson.dumps(b.get("input", b.get("text"))).decode()) for b in content)
    else:
        reply = f"Tool said: {' | '.join(results)}" if results else f"Echo: {text}"
        stop_reason, stop_sequence = "end_turn", None
        hits = [(reply.find(s), s) for s in body.get("stop_sequences") or [] if s and s in reply]
        if hits:
            pos, stop_sequence = min(hits)
            reply, stop_reason = reply[:pos], "stop_sequence"
        pieces = re.findall(r"\S+\s*", reply)
        if len(pieces) > body["max_tokens"]:
            reply, stop_reason, stop_sequence = "".join(pieces[: body["max_tokens"]]), "max_tokens", None
        content.append({"type": "text", "text": reply})
        out_tokens = _words(reply)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": body["model"], "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": {"input_tokens": _words(_all_text(body)), "output_tokens": out_tokens}}


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_events(message: dict[str, Any], *, fail_midway: bool = False) -> list[bytes]:
    """The exact event sequence the Messages API streams for ``message``."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    out = [sse("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(message["content"]):
        empty = {"type": "text", "text": ""} if block["type"] == "text" else {**block, "input": {}}
        out.append(sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": empty}))
        if i == 0:
            out.append(sse("ping", {"type": "ping"}))
        if block["type"] == "text":
            for piece in re.findall(r"\S+\s*|\s+", block["text"]) or [""]:
                out.append(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": piece}}))
                if fail_midway:
                    error = {"type": "overloaded_error", "message": "Overloaded"}
                    return out + [sse("error", {"type": "error", "error": error})]
        else:
            js = orjson.dumps(block["input"]).decode()
            for piece in [""] + [js[k:k + 7] for k in range(0, len(js), 7)]:
                out.append(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "input_json_delta", "partial_json": piece}}))
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                                        "stop_sequence": message["stop_sequence"]},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    return out + [sse("message_stop", {"type": "message_stop"})]


def make_anthropic_app(*, api_key: str = "test-key", cache_read_input_tokens: int = 0,
                       cache_creation_input_tokens: int = 0, latency_s: float = 0.0) -> web.Application:
    """The app; the cache knobs are reported in every answer's usage, ``latency_s`` delays answers."""
    app = web.Application()
    app[REQUESTS] = []
    app[FAILURES] = []
    counter = [0]

    async def messages(request: web.Request) -> web.StreamResponse:
        counter[0] += 1
        rid, msg_id = f"req_{counter[0]:06d}", "msg_" + hashlib.sha1(str(counter[0]).encode()).hexdigest()[:24]
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        app[REQUESTS].append(body)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")  # what SDK 2.x sends
        if api_key not in (request.headers.get("x-api-key"), bearer):
            return error_response(401, "invalid x-api-key", rid)
        if not request.headers.get("anthropic-version"):
            return error_response(400, "anthropic-version: header is required", rid)
        if "application/json" not in request.headers.get("content-type", ""):
            return error_response(400, "content-type must be application/json", rid)
        if app[FAILURES]:
            status, message = app[FAILURES].pop(0)
            return error_response(status, message, rid)
        try:
            validate(body)
        except Invalid as e:
            return error_response(400, str(e), rid)
        assert isinstance(body, dict)
        if latency_s:
            await asyncio.sleep(latency_s)
        message = answer(body, msg_id)
        if cache_read_input_tokens or cache_creation_input_tokens:
            message["usage"].update(cache_read_input_tokens=cache_read_input_tokens,
                                    cache_creation_input_tokens=cache_creation_input_tokens)
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(message), content_type="application/json",
                                headers={"request-id": rid})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "request-id": rid})
        await resp.prepare(request)
        for event in stream_events(message, fail_midway="fail midway" in _last_user(body)[0].lower()):
            await resp.write(event)
        await resp.write_eof()
        return resp

    app.router.add_post("/v1/messages", messages)
    return app
