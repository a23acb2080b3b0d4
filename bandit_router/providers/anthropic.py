"""Anthropic's native Messages API (``POST {base_url}/v1/messages``) behind the OpenAI-shaped
:class:`~bandit_router.providers.base.Provider` interface: OpenAI requests → Messages, Messages
responses and SSE events → ``chat.completion`` / ``chat.completion.chunk``. Translation choices:

* system and developer messages (wherever they appear) are hoisted into the top-level ``system``,
  joined by a blank line; consecutive turns of the same role are merged (``role: tool`` messages
  become user ``tool_result`` blocks, placed before any text of the same user turn, as Anthropic
  requires); blank text and empty turns are dropped (Anthropic rejects them), as is trailing
  whitespace of a final assistant (prefill) turn; the first turn must be the user's (400 otherwise).
* ``max_tokens`` is required by Anthropic: ``max_completion_tokens``, else ``max_tokens``, else
  ``default_max_tokens`` (4096). ``temperature`` is clamped to Anthropic's [0, 1].
* Rejected with 400 (they would change the shape of the answer): ``n`` > 1, ``logprobs``,
  ``response_format`` json_schema, non-function tools, images that are not base64 data URLs and
  other non-text content parts (audio, files). Dropped silently: sampling knobs Anthropic lacks
  (``frequency_penalty``, ``presence_penalty``, ``seed``, ``logit_bias``), ``response_format``
  json_object (the prompt must ask for JSON anyway), ``reasoning_effort``, ``stream_options``.
* Thinking blocks in responses are not surfaced (Chat Completions has no field for them).
* Usage: Anthropic's ``input_tokens`` excludes cached tokens, so ``prompt_tokens`` =
  input + cache_creation + cache_read, and ``cached_tokens`` = cache_read (OpenAI's convention,
  which :meth:`Price.cost` expects: cached tokens are a subset of the prompt). Cache writes are
  billed at the plain input price here (Anthropic charges 1.25x), a slight underestimate.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from .base import (
    Completion,
    StreamResult,
    UpstreamError,
    Usage,
    cut_short,
    error_text,
    http_error,
    invalid_chunk,
    transport_error,
)
from .http import Endpoint, HttpClient, HttpClientError, LineTooLong, Response, Timeouts

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MAX_LINE_BYTES = 4 * 1024 * 1024  # an SSE line longer than this is not an event
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                "overloaded_error": 529}
_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _bad(message: str) -> UpstreamError:
    return UpstreamError(400, f"cannot translate to Anthropic Messages: {message}")


# -- requests -----------------------------------------------------------------------------------
def _text_of(content: Any, where: str) -> str:
    """Text of a system/developer/tool message: a string or a list of text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    for p in content if isinstance(content, list) else [content]:
        if not (isinstance(p, dict) and p.get("type") == "text"):
            kind = p.get("type") if isinstance(p, dict) else type(p).__name__
            raise _bad(f"{where}: content part of type {kind!r} is not supported here (only text)")
    return "\n".join(str(p.get("text") or "") for p in content)


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    url = str((part.get("image_url") or {}).get("url") or "")
    header, sep, data = url.partition(",")
    if not (url.startswith("data:") and sep and header.endswith(";base64")):
        raise _bad(f"{where}: image_url part with a remote URL is not supported; send a base64 data URL "
                   "(data:image/png;base64,...)")
    media_type = header[5:-7]
    if media_type not in _IMAGE_TYPES:
        raise _bad(f"{where}: image_url media type {media_type!r} is not supported (use {', '.join(_IMAGE_TYPES)})")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """User/assistant content → Anthropic content blocks (blank text is dropped: Anthropic rejects it)."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content and content.strip() else []
    if not isinstance(content, list):
        raise _bad(f"{where}: content must be a string or a list of content parts")
    out: list[dict[str, Any]] = []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else type(p).__name__
        if kind == "text":
            if str(p.get("text") or "").strip():
                out.append({"type": "text", "text": str(p["text"])})
        elif kind == "image_url":
            out.append(_image(p, where))
        elif kind != "refusal":
            raise _bad(f"{where}: content part of type {kind!r} is not supported by the Anthropic adapter")
    return out


def _tool_use(call: dict[str, Any], where: str) -> dict[str, Any]:
    fn = call.get("function") or {}
    if call.get("type", "function") != "function" or not fn.get("name"):
        raise _bad(f"{where}: only function tool_calls with a name are supported")
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str | bytes) else args
    except orjson.JSONDecodeError:
        raise _bad(f"{where}: tool call {call.get('id')!r} has arguments that are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _bad(f"{where}: tool call {call.get('id')!r} arguments must be a JSON object")
    return {"type": "tool_use", "id": str(call.get("id") or ""), "name": str(fn["name"]), "input": parsed}


def _turns(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object")
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(m.get("content"), where))
            continue
        if role in ("user", "assistant"):
            calls = (m.get("tool_calls") or []) if role == "assistant" else []
            blocks = _blocks(m.get("content"), where) + [_tool_use(c, f"{where}.tool_calls") for c in calls]
        elif role == "tool":
            role = "user"
            result = _text_of(m.get("content"), where)
            blocks = [{"type": "tool_result", "tool_use_id": str(m.get("tool_call_id") or ""),
                       **({"content": result} if result else {})}]
        else:
            raise _bad(f"{where}: role {role!r} is not supported (use system, developer, user, assistant or tool)")
        if blocks and turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        elif blocks:
            turns.append({"role": role, "content": blocks})
    if not turns or turns[0]["role"] != "user":
        raise _bad("Anthropic requires the first non-system message to be a (non-empty) user message")
    for t in turns:  # tool results first within a user turn
        t["content"].sort(key=lambda b: b["type"] != "tool_result")
    last = turns[-1]["content"][-1]
    if turns[-1]["role"] == "assistant" and last["type"] == "text":  # a prefill may not end in whitespace
        last["text"] = last["text"].rstrip()
    return [s for s in system if s], turns


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    if not tools:
        return {}
    out: dict[str, Any] = {"tools": []}
    for i, t in enumerate(tools):
        fn = (t.get("function") or {}) if isinstance(t, dict) else {}
        if not isinstance(t, dict) or t.get("type") != "function" or not fn.get("name"):
            raise _bad(f"tools[{i}]: only function tools with a name are supported")
        tool = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            tool["description"] = fn["description"]
        out["tools"].append(tool)
    choice = body.get("tool_choice")
    tc: dict[str, Any]
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        tc = {"type": "tool", "name": choice["function"]["name"]}
    elif isinstance(choice, str | None) and (choice or "auto") in _TOOL_CHOICES:
        tc = {"type": _TOOL_CHOICES[choice or "auto"]}
    else:
        raise _bad(f"tool_choice {choice!r} is not supported")
    if body.get("parallel_tool_calls") is False and tc["type"] != "none":
        tc["disable_parallel_tool_use"] = True
    if choice is not None or "disable_parallel_tool_use" in tc:
        out["tool_choice"] = tc
    return out


def to_messages(body: dict[str, Any], model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                stream: bool = False) -> dict[str, Any]:
    """An OpenAI Chat Completions request body → an Anthropic Messages request body."""
    fmt = body.get("response_format") or {}
    schema = isinstance(fmt, dict) and fmt.get("type") == "json_schema"
    for unsupported, bad in (("n > 1", (body.get("n") or 1) > 1), ("logprobs", bool(body.get("logprobs"))),
                             ("response_format json_schema", schema)):
        if bad:
            raise _bad(f"{unsupported} is not supported by the Anthropic adapter")
    system, turns = _turns(body.get("messages"))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    out: dict[str, Any] = {"model": model, "max_tokens": int(max_tokens), "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    if body.get("temperature") is not None:
        out["temperature"] = min(max(float(body["temperature"]), 0.0), 1.0)
    if body.get("top_p") is not None:
        out["top_p"] = float(body["top_p"])
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    out.update(_tools(body))
    if stream:
        out["stream"] = True
    return out


# -- responses ----------------------------------------------------------------------------------
def to_usage(u: dict[str, Any] | None) -> Usage:
    u = u or {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + int(u.get("cache_creation_input_tokens") or 0) + cached
    return Usage(prompt, int(u.get("output_tokens") or 0), cached)


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def from_message(msg: dict[str, Any], name: str) -> Completion:
    """An Anthropic Message → an OpenAI ChatCompletion body labelled with ``name``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": args}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    usage = to_usage(msg.get("usage"))
    body = {"id": f"chatcmpl-{msg.get('id', '')}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": [{"index": 0, "message": message, "logprobs": None,
                                        "finish_reason": FINISH_REASONS.get(msg.get("stop_reason") or "", "stop")}],
            "usage": usage_dict(usage)}
    return Completion(body, usage)


# -- the provider -------------------------------------------------------------------------------
class AnthropicProvider:
    """Adapter for ``POST {base_url}/v1/messages`` (``base_url`` like https://api.anthropic.com; a
    trailing ``/v1`` is accepted). ``name`` is the model as the router knows it, ``upstream_model``
    the Anthropic model id; responses are relabelled with ``name``."""

    def __init__(self, client: HttpClient, *, name: str, base_url: str, upstream_model: str | None,
                 api_key: str | None, timeout_s: float = 120.0, connect_timeout_s: float = 10.0,
                 first_byte_timeout_s: float | None = None,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS, anthropic_version: str = ANTHROPIC_VERSION) -> None:
        self.client = client
        self.name = name
        base = base_url.rstrip("/")
        self.url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self.upstream_model = upstream_model or name
        self.default_max_tokens = default_max_tokens
        self._api_key = api_key or ""
        self._endpoint = Endpoint.of(self.url, {"content-type": "application/json",
                                                "anthropic-version": anthropic_version,
                                                **({"x-api-key": api_key} if api_key else {})})
        # read: the wait for the response headers (first byte), and then between stream chunks
        self._timeouts = Timeouts(total=timeout_s, connect=connect_timeout_s, read=first_byte_timeout_s)

    def _payload(self, body: dict[str, Any], stream: bool) -> bytes:
        return orjson.dumps(to_messages(body, self.upstream_model, default_max_tokens=self.default_max_tokens,
                                        stream=stream))

    def _failure(self, status: int, kind: str, msg: str, request_id: str | None = None,
                 headers: Mapping[str, str] | None = None) -> UpstreamError:
        """Mapped by :func:`~.base.http_error` (529 overloaded is a retryable 502); no secrets."""
        detail = f"{kind}: {msg}" + (f" (request-id {request_id})" if request_id else "")
        return http_error(self.name, status, detail, headers=headers, secret=self._api_key)

    async def _error(self, resp: Response) -> UpstreamError:
        text = await error_text(resp)
        try:
            err = orjson.loads(text)["error"]
            kind, msg = str(err.get("type") or "error"), str(err["message"])
        except Exception:  # noqa: BLE001 - any non-Anthropic error body
            kind, msg = "error", text or resp.reason or "no body"
        return self._failure(resp.status, kind, msg, resp.headers.get("request-id"), resp.headers)

    async def complete(self, body: dict[str, Any]) -> Completion:
        payload = self._payload(body, False)
        try:
            async with self.client.post(self._endpoint, payload, self._timeouts) as resp:
                if resp.status != 200:
                    raise await self._error(resp)
                data = orjson.loads(await resp.read())
        except HttpClientError as e:
            raise transport_error(self.name, e) from None
        except orjson.JSONDecodeError:
            raise invalid_chunk(self.name, "JSON body") from None
        if not isinstance(data, dict):
            raise invalid_chunk(self.name, "JSON body")
        return from_message(data, self.name)

    async def stream(self, body: dict[str, Any], result: StreamResult) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield ``chat.completion.chunk`` objects, a list per Anthropic event; usage goes into
        ``result`` (and into a final ``choices: []`` chunk only if the client asked for
        ``stream_options.include_usage``).
        ``result.finished`` only after ``message_stop``; a stream closed before it, an event that is
        not a JSON object or an ``error`` event raise :class:`UpstreamError` (after the chunks already
        yielded)."""
        t = ChunkTranslator(self.name, include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
        payload = self._payload(body, True)
        try:
            async with self.client.post(self._endpoint, payload, self._timeouts, stream=True) as resp:
                if resp.status != 200:
                    raise await self._error(resp)
                async for event in sse_events(resp.lines(MAX_LINE_BYTES)):
                    if not isinstance(event, dict):
                        raise invalid_chunk(self.name, "stream event")
                    if out := t.feed(event):
                        yield out
                    if t.error is not None:
                        kind = str(t.error.get("type") or "error")
                        raise self._failure(ERROR_STATUS.get(kind, 500), kind,
                                            f"{t.error.get('message') or 'stream error'} (mid-stream)")
                    if t.done:
                        break
                else:
                    raise cut_short(self.name, "message_stop")
        except (orjson.JSONDecodeError, LineTooLong):  # bad event JSON; a line too long
            raise invalid_chunk(self.name, "stream event") from None
        except HttpClientError as e:
            raise transport_error(self.name, e) from None
        result.usage = t.usage
        last = t.finish()
        result.finished = True  # already with the last chunks: the end can go with them
        yield last


async def sse_events(lines: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events → the JSON of their data (Anthropic names the event in its ``type``)."""
    data: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            yield orjson.loads(b"\n".join(data))
            data = []
    if data:
        yield orjson.loads(b"\n".join(data))


class ChunkTranslator:
    """Anthropic stream events → OpenAI chunks, one event at a time. ``done`` after message_stop,
    ``error`` (the event's ``error`` object) after an error event; :meth:`finish` gives the last chunks."""

    def __init__(self, name: str, *, include_usage: bool = False) -> None:
        self.name, self.include_usage, self.id, self.created = name, include_usage, "chatcmpl-", int(time.time())
        self.raw_usage: dict[str, Any] = {}
        self.tools: dict[int, int] = {}  # Anthropic content block index → OpenAI tool_calls index
        self.stop_reason: str | None = None
        self.done = False
        self.error: dict[str, Any] | None = None

    @property
    def usage(self) -> Usage:
        return to_usage(self.raw_usage)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def feed(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        kind = ev.get("type")
        if kind == "message_start":
            msg = ev.get("message") or {}
            self.id = f"chatcmpl-{msg.get('id', '')}"
            self.raw_usage.update(msg.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            if block.get("type") == "tool_use":
                self.tools[ev.get("index", 0)] = n = len(self.tools)
                call = {"index": n, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}
                return [self._chunk({"tool_calls": [call]})]
        elif kind == "content_block_delta":
            delta = ev.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                n = self.tools.get(ev.get("index", 0), 0)
                return [self._chunk({"tool_calls": [{"index": n, "function": {"arguments": delta["partial_json"]}}]})]
        elif kind == "message_delta":  # usage here is cumulative: it replaces what message_start said
            self.stop_reason = (ev.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.raw_usage.update({k: v for k, v in (ev.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.error = ev.get("error") or {}
        return []  # ping, content_block_stop, thinking and other blocks: nothing for the client

    def finish(self) -> list[dict[str, Any]]:
        out = [self._chunk({}, FINISH_REASONS.get(self.stop_reason or "", "stop"))]
        if self.include_usage:
            out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.name, "choices": [], "usage": usage_dict(self.usage)})
        return out
