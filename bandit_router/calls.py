"""Calling the chosen model: retries, fallbacks and circuit breakers, streaming, cost accounting,
and handing the answer to the graders. A part of :class:`~bandit_router.service.Service` (a mixin
over the service's state), kept apart because it is the one part that talks to upstreams.

decision → provider (retry / fall back per ``fallback.Tries``) → usage × price → decision row →
graders in the background
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from .cache import NOT_REPLAYED
from .fallback import Attempt, Tries
from .features import Message
from .providers.base import Completion, Provider, StreamResult, UpstreamError, Usage
from .router import Decision
from .storage.base import StateRow, StoreOverloaded

if TYPE_CHECKING:
    from .books import Books
    from .config import RouterConfig
    from .grading import Grading
    from .reliability import Breakers
    from .router import Router
    from .storage.base import Store

log = logging.getLogger("bandit_router")


DONE = b"data: [DONE]\n\n"  # a stream's last SSE event
_REPLAY_LOSES = frozenset(NOT_REPLAYED)
_EMPTY: dict[str, Any] = {}


def _note(batch: list[dict[str, Any]], text: list[str], meta: dict[str, Any]) -> None:
    """Keep what streamed chunks say about the whole answer: its text, its finish reason, and
    whether a replay could reproduce it (not with tool calls or several choices)."""
    for chunk in batch:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or _EMPTY
            piece = delta.get("content")
            if piece:
                text.append(piece)
            if choice.get("index", 0) != 0:
                meta["plain"] = False
            elif lost := delta.keys() & _REPLAY_LOSES:
                if any(delta[k] for k in lost):
                    meta["plain"] = False
            if choice.get("finish_reason"):
                meta["finish_reason"] = choice["finish_reason"]


class Calling:
    """Upstream calls of the service (see the module docstring)."""

    config: RouterConfig
    router: Router
    store: Store
    providers: dict[str, Provider]
    breakers: Breakers
    grading: Grading
    books: Books  # what an answer leaves to do, run off its path
    metrics: Any
    _rng: random.Random

    # defined by the service: write a decision's row with its outcome; a decision it still holds;
    # which graders may see a request of this locality
    _finish: Callable[..., Any]
    _entry: Callable[[str | None], Any]
    _judge_allowed: Callable[[Any], Any]
    _charge: Callable[[Any, float], None]
    _inflight: dict[str, Any]  # decisions whose row is not written yet
    pacers: Any  # the tenants' budgets (empty: none configured)

    # -- completing --------------------------------------------------------------------------
    def account(self, d: Decision, usage: Usage, status: str = "completed", *,
                graded: tuple[Sequence[Message], str | None, dict[str, Any] | None] | None = None,
                cost: float | None = None) -> float:
        """The call ended: its row written with cost and tokens, the cost charged to its tenant's
        budget and, with ``graded`` (messages, answer, reference), the category's graders scheduled.
        One step, so what the budget and the graders need (the tenant, the locality) is read from
        the decision's entry as it leaves the in-flight set, whatever the LRU has evicted since.
        ``cost``: the call's cost when it is already known (else from the usage)."""
        if usage.completion_tokens:
            self.router.observe_output(d, usage.completion_tokens)
        cost, t = self._settle(d, usage, status, cost)
        if graded is not None:
            self._grade_later(d, t, *graded)
        return cost

    def _account_after(self, d: Decision, usage: Usage, graded: Any, cost: float) -> None:
        """:meth:`account` but the output estimate (updated already), run with the books once the
        answer has gone out (see :meth:`complete`)."""
        try:
            _, t = self._settle(d, usage, "completed", cost)
            self._grade_later(d, t, *graded)
        except Exception:  # nobody to answer any more: say so in the log
            log.exception("recording the completed call of %s failed", d.event_id)
            if (d.event_id or "") in self._inflight:  # its row not written yet: write it, not left in flight
                try:
                    self._finish(d, cost_usd=cost, completion_tokens=usage.completion_tokens, status="completed")
                except Exception:
                    log.exception("writing the row of %s failed", d.event_id)

    def _settle(self, d: Decision, usage: Usage, status: str, cost: float | None = None) -> tuple[float, Any]:
        """The call's cost from its usage (unless given): its row written, its tenant charged,
        counted in metrics. Returns the cost and the decision's entry."""
        if cost is None:
            cost = self._cost(d.model, usage)
        t = self._finish(d, cost_usd=cost, completion_tokens=usage.completion_tokens, status=status)
        self._charge(t, cost)
        if self.metrics is not None:
            self.metrics.cost(d, cost)
        return cost, t

    def _cost(self, model: str, u: Usage) -> float:
        return self.router.prices[model].cost(u.prompt_tokens, u.completion_tokens, u.cached_tokens)

    def _cap_output(self, d: Decision, body: dict[str, Any]) -> dict[str, Any]:
        """Cap the request's output tokens at the chosen model's configured limit."""
        limit = self.router.specs[d.arm].max_output_tokens
        if limit is None:
            return body
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        asked = body.get(key)
        return {**body, key: limit if not isinstance(asked, int) else min(asked, limit)}

    async def judge_complete(self, model: str, messages: list[dict[str, Any]]) -> tuple[str, float]:
        """A call for an LLM judge: through the configured upstream, not routed, not logged as a decision."""
        if model not in self.providers:
            raise KeyError(f"judge model {model!r} is not configured")
        done = await self.providers[model].complete({"model": model, "messages": messages, "max_tokens": 200,
                                                     "temperature": 0})
        text = ((done.body.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        return text, self._cost(model, done.usage)

    def _grade_later(self, d: Decision, t: Any, messages: Sequence[Message], answer: str | None,
                     reference: dict[str, Any] | None) -> None:
        """Run the category's graders in the background; their results arrive as feedback. ``t``
        is the decision's entry: no LLM judge outside its locality sees the request."""
        if answer is not None and d.event_id:
            self.grading.schedule(d.event_id, d.category, d.model, messages, answer, reference, self.feedback,
                                  keep=self._judge_allowed(t))

    def _tries(self, d: Decision, fallback: bool) -> Tries:
        return Tries(d, self.breakers, self.config.reliability, switch=self._switch,
                     on_model_failed=self._model_failed, rng=self._rng, fallback=fallback,
                     on_latency=self._observe_latency)

    def _observe_latency(self, d: Decision, first: float | None, total: float) -> None:
        """A timed answer, folded into the latency estimates on the loop's next turn: after the
        answer has gone out, before the next request decides (the breaker has counted it already)."""
        asyncio.get_running_loop().call_soon(self.router.observe_latency, d, first, total)

    def _switch(self, d: Decision, k: int) -> None:
        """Fall back: the decision (and so its row and its feedback) now names model ``k``."""
        d.model, d.arm, d.expected_cost = self.router.models[k], k, float(d.costs[k])
        if d.latencies is not None:
            d.latency_s = float(d.latencies[k])

    def _model_failed(self, d: Decision) -> None:
        """A model failed a request that falls back: learned as ``failure_quality`` if configured."""
        q = self.config.reliability.failure_quality
        t = self._entry(d.event_id)
        if q is None or t is None or not t.learn:
            return
        failed = copy.copy(d)
        failed.event_id, failed.quality, failed.stamp = None, None, None  # its own observation
        self.router.learn(failed, q)
        try:
            self.store.save_state([StateRow(k, v, time.time()) for k, v in self.router.dirty_states(failed).items()])
        except StoreOverloaded:
            log.warning("storage queue full: state after a failure of %s not saved (the next checkpoint will)",
                        failed.model)

    async def complete(self, d: Decision, body: dict[str, Any], reference: dict[str, Any] | None = None, *,
                       failed: list[Attempt] | None = None) -> tuple[Completion, float]:
        """Call the chosen model, retrying and falling back as configured; ``d`` is switched to the
        model that answered, and ``failed`` (when given) receives the failed attempts."""
        tries = self._tries(d, fallback=self._learns(d))
        if failed is not None:
            tries.attempts = failed
        while True:
            capped = self._cap_output(d, body)
            tries.begin()
            self.books.run_soon()  # earlier answers' books: while this call waits on its upstream
            try:
                done = await self.providers[d.model].complete(capped)
            except UpstreamError as e:
                if await tries.failed(e):
                    continue
                self._finish(d, status="failed")
                raise
            except BaseException:
                tries.abandoned()
                self._finish(d, status="failed")
                raise
            tries.succeeded()
            break
        choices = done.body.get("choices") or [{}]
        answer = (choices[0].get("message") or {}).get("content")
        graded = (capped["messages"], answer, reference)
        if self.pacers:  # the answer reports the tenant's budget after this call: charge it first
            return done, self.account(d, done.usage, graded=graded)
        # The answer first, the books later (see books.py): the row, the metrics and the graders
        # wait until the loop next waits on an upstream, or another endpoint is asked, or 2 ms.
        # Nothing that needs them can come first: the other endpoints run the books before they
        # read, and feedback on a decision still in flight writes its row first. What the next
        # decision reads (the output-length and latency estimates) is updated on the loop's next
        # turn instead, before another request can decide. The cost is fixed now, as the answer
        # reports it.
        cost = self._cost(d.model, done.usage)
        if done.usage.completion_tokens:
            asyncio.get_running_loop().call_soon(self.router.observe_output, d, done.usage.completion_tokens)
        self.books.add(self._account_after, d, done.usage, graded, cost)
        return done, cost

    def _learns(self, d: Decision) -> bool:
        """Only routed requests fall back: a pass-through asked for one model."""
        t = self._entry(d.event_id)
        return t is not None and t.learn

    async def stream(self, d: Decision, body: dict[str, Any], reference: dict[str, Any] | None = None, *,
                     failed: list[Attempt] | None = None,
                     answer: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
        """SSE lines for a streamed completion; usage and cost are recorded when the stream ends.

        Retries and fallbacks happen only before the first chunk is yielded; after it, an upstream
        failure is raised to the caller, who ends the client's stream with an error event.

        ``answer`` (when given) receives the whole answer once the stream has ended properly, as a
        ChatCompletion under ``"completion"``, if it was plain text in one choice (what the response
        cache can replay); tool calls and several choices are not captured."""
        tries = self._tries(d, fallback=self._learns(d))
        if failed is not None:
            tries.attempts = failed
        text: list[str] = []
        meta: dict[str, Any] = {"plain": True, "finish_reason": None}
        started = False  # something reached the client: too late to fall back
        ended = False  # data: [DONE] was handed to the caller (with the last chunks, or alone)
        delivered = False  # the caller came back for more after the last piece: it went out
        result = StreamResult()
        capped = body
        try:
            while True:
                result = StreamResult()
                capped = self._cap_output(d, body)
                text.clear()
                meta: dict[str, Any] = {"plain": True, "finish_reason": None}
                tries.begin()
                self.books.run_soon()
                try:
                    async with contextlib.aclosing(self.providers[d.model].stream(capped, result)) as batches:
                        async for batch in batches:  # what one upstream read brought: one write to the client
                            tries.first_chunk()
                            if "id" not in meta:
                                first = batch[0]
                                meta.update(id=first.get("id"), created=first.get("created"), model=first.get("model"))
                            started = True
                            _note(batch, text, meta)
                            sse = getattr(batch, "sse", None)  # the upstream's bytes, when they pass unchanged
                            out = sse if sse is not None else b"".join(
                                [b"data: " + orjson.dumps(c) + b"\n\n" for c in batch])
                            if result.finished:  # the upstream's last batch: the end goes in the same write
                                out += DONE
                                ended = True
                            yield out
                            delivered = ended
                except UpstreamError as e:
                    if not started and await tries.failed(e):
                        continue
                    if started:
                        tries.failed_late(e)  # counted against the model; too late to fall back
                    raise
                except BaseException:
                    tries.abandoned()
                    raise
                tries.succeeded()
                break
            if not ended:  # the upstream's end came in a read of its own: [DONE] goes alone
                ended = True
                yield DONE
                delivered = True
        finally:
            # Completed only once the client took the stream's end: a client gone while the last
            # piece was being written (GeneratorExit at that yield) has a stream cut short.
            if result.finished and delivered:
                self.account(d, result.usage, graded=(capped["messages"], "".join(text), reference))
                if answer is not None and meta["plain"]:
                    u = result.usage
                    answer["completion"] = {
                        "id": meta.get("id"), "object": "chat.completion", "created": meta.get("created"),
                        "model": meta.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                                     "finish_reason": meta["finish_reason"] or "stop"}],
                        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                                  "total_tokens": u.prompt_tokens + u.completion_tokens}}
            else:
                self._cut_short(d, result.usage, "".join(text))

    def _cut_short(self, d: Decision, usage: Usage, text: str) -> None:
        """A stream that did not end properly (the client left, or the upstream failed after its
        first chunk). The upstream still bills what it read and wrote, so the row and the tenant's
        budget get that: the usage it reported, else an estimate (the prompt, and 4 characters a
        token of the text streamed). Nothing streamed: nothing charged."""
        if not (text or usage.completion_tokens):
            self._finish(d, status="failed")
            return
        billed = Usage(usage.prompt_tokens or d.prompt_tokens, usage.completion_tokens or -(-len(text) // 4),
                       usage.cached_tokens)
        self._settle(d, billed, "failed")  # (not learned as an output length: the answer was cut)
