"""The response cache: exact-match answers for deterministic requests, per tenant.

A request is *cacheable* when it is deterministic: ``temperature`` is 0 (or the config opts every
request in) and it asks for one choice (``n`` absent or 1). Streamed or not, it shares its entry:
a streamed answer is stored as the ChatCompletion it adds up to (when it is plain text), and a hit
for a streamed request is replayed as chunks (see :func:`replay_chunks`). Its key is a SHA-256 over

* the tenant (the client's API key identity, or its tenant name): an entry is never served to
  another tenant, since the key itself differs;
* the normalised request: the body's JSON with sorted keys, without the fields that do not change
  the answer (``stream``, ``stream_options``, ``router``, ``user``, ``metadata``, ``store``);
* the eligible model set of the request (sorted names): the models its own constraints allow
  (category, locality, enabled models, the model it named), so a request whose constraints allow
  other models does not get their answers. What changes by the moment (open breakers, a latency
  deadline) and ``max_cost_usd`` are not part of it: a cached answer costs nothing and takes no time.

:class:`ResponseCache` is the in-memory index: LRU order, a TTL and a size cap. It does no I/O;
the service writes entries to the store through the writer and loads them back at start-up.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["CacheEntry", "ResponseCache", "cache_key", "cacheable", "replay_chunks"]

# Request fields that do not change the answer (and "router", our own hints).
_IGNORED = frozenset({"stream", "stream_options", "router", "user", "metadata", "store"})


def cacheable(body: Mapping[str, Any], *, all_requests: bool = False) -> bool:
    """Whether a Chat Completions request is deterministic enough to answer from the cache."""
    if body.get("n") not in (None, 1):
        return False
    if all_requests:
        return True
    t = body.get("temperature")
    return isinstance(t, int | float) and not isinstance(t, bool) and t == 0


def cache_key(tenant: str, body: Mapping[str, Any], eligible: Iterable[str]) -> str:
    """The entry's key: tenant, normalised request and eligible models, hashed."""
    request = {k: v for k, v in body.items() if k not in _IGNORED}
    h = hashlib.sha256()
    h.update(orjson.dumps([tenant, sorted(eligible)]))
    h.update(b"\0")
    h.update(orjson.dumps(request, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


NOT_REPLAYED = ("tool_calls", "function_call", "audio")  # message parts a replayed stream would lose


def replay_chunks(completion: Mapping[str, Any], *, include_usage: bool = False) -> list[dict[str, Any]] | None:
    """A cached ChatCompletion as the stream chunks an upstream would have sent (OpenAI's format:
    the role and content, then the finish reason, then usage if asked for), or None when it is not
    plain text in one choice (tool calls are not replayed as a stream)."""
    choices = completion.get("choices") or []
    if len(choices) != 1:
        return None
    message = choices[0].get("message") or {}
    if any(message.get(k) for k in NOT_REPLAYED) or not isinstance(message.get("content"), str):
        return None
    base = {"id": completion.get("id"), "object": "chat.completion.chunk", "created": completion.get("created"),
            "model": completion.get("model")}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": message["content"]},
                                 "finish_reason": None}]},
           {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choices[0].get("finish_reason") or "stop"}]}]
    if include_usage and completion.get("usage"):
        out.append({**base, "choices": [], "usage": completion["usage"]})
    return out


@dataclass(slots=True, frozen=True)
class CacheEntry:
    key: str
    tenant: str
    model: str  # the model that answered
    category: str
    body: bytes  # the upstream's ChatCompletion JSON (without our "router" field)
    created: float
    expires: float


class ResponseCache:
    """LRU + TTL + size cap. ``put`` and ``expire`` return the keys they dropped, so the caller can
    delete them from the store too."""

    def __init__(self, *, max_entries: int = 10_000, ttl_s: float = 3600.0) -> None:
        if max_entries < 1 or not ttl_s > 0:
            raise ValueError(f"cache: max_entries ({max_entries}) must be >= 1 and ttl_s ({ttl_s}) > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.bypasses = 0  # requests that asked not to be answered from the cache
        self.stores = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float, accept: Callable[[CacheEntry], bool] | None = None) -> CacheEntry | None:
        """The live entry for ``key``, if ``accept(entry)`` (when given) takes it: only then is it a hit."""
        e = self._entries.get(key)
        if e is None or e.expires <= now:
            if e is not None:
                del self._entries[key]
            self.misses += 1
            return None
        if accept is not None and not accept(e):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return e

    def entry(self, key: str, tenant: str, model: str, category: str, body: bytes, now: float) -> CacheEntry:
        return CacheEntry(key, tenant, model, category, body, now, now + self.ttl_s)

    def put(self, e: CacheEntry) -> list[str]:
        """Add (or replace) an entry; returns the keys evicted to stay within ``max_entries``."""
        self._entries[e.key] = e
        self._entries.move_to_end(e.key)
        self.stores += 1
        evicted = []
        while len(self._entries) > self.max_entries:
            key, _ = self._entries.popitem(last=False)
            evicted.append(key)
        return evicted

    def load(self, entries: Iterable[CacheEntry], now: float) -> list[str]:
        """Restore stored entries (oldest first, so the newest survive the cap); returns the keys
        that did not fit (a smaller cap than before)."""
        stores, dropped = self.stores, []
        for e in sorted(entries, key=lambda e: e.created):
            if e.expires > now:
                dropped += self.put(e)
        self.stores = stores
        return dropped

    def expire(self, now: float) -> list[str]:
        gone = [k for k, e in self._entries.items() if e.expires <= now]
        for k in gone:
            del self._entries[k]
        return gone

    def clear(self, tenant: str | None = None) -> list[str]:
        gone = [k for k, e in self._entries.items() if tenant is None or e.tenant == tenant]
        for k in gone:
            del self._entries[k]
        return gone

    def stats(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {"entries": len(self._entries), "max_entries": self.max_entries, "ttl_s": self.ttl_s,
                "hits": self.hits, "misses": self.misses, "bypasses": self.bypasses,
                "stores": self.stores, "hit_rate": self.hits / total if total else None}
