"""The storage interface: row types and the ``Store`` protocol.

Everything the service persists goes through one ``Store``; SQL lives only in the backend
module (``sqlite.py`` today, PostgreSQL later).  The contract every backend keeps:

* Writes are queued to ONE writer that batches many operations into one transaction, so the
  asyncio event loop never waits on disk.
* ``record_decision``, ``update_decision`` and ``save_state`` are fire-and-forget: they return
  as soon as the operation is queued.  A write that fails in the writer is logged and counted
  (``failed_writes``); it cannot be reported to the caller, who has moved on.
* ``record_feedback`` is acknowledged only once durable: its awaitable resolves after the
  transaction holding the feedback row AND its state rows has committed, and raises if that
  write failed.  A retry is safe: (event_id, source) is an upsert.
* Backpressure: the queue is bounded.  When it is full, every enqueueing call
  (``record_decision``, ``update_decision``, ``save_state``, ``record_feedback``) raises
  ``StoreOverloaded`` *before* queuing anything -- nothing is dropped silently, and the HTTP
  layer can answer 503.  ``flush``/``close``/``expire_decisions`` wait for room instead.
* Calls that enqueue before ``start()`` or after ``close()`` raise ``StoreClosed``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

DECISION_STATUSES = frozenset({"routed", "completed", "failed", "cached"})  # cached: answered from the cache
# Columns ``update_decision`` may change: completion (cost_usd, completion_tokens, status)
# and learning (stamp, quality).  Identity columns of a decision are immutable.
UPDATABLE_FIELDS = frozenset({"cost_usd", "completion_tokens", "status", "stamp", "quality"})


class StoreOverloaded(RuntimeError):
    """The write queue is full: the operation was NOT queued (answer 503 / retry later)."""


class StoreClosed(RuntimeError):
    """The store is not running (not started yet, or closed)."""


@dataclass(slots=True)
class DecisionRow:
    """One routing decision; ``x`` is the float64 feature vector as ``ndarray.tobytes()``."""

    event_id: str
    created: float  # unix seconds
    category: str
    model: str
    x: bytes
    prompt_tokens: int
    expected_cost: float
    cost_weight: float
    learn: bool  # False for pass-through requests: logged, not learned from
    stamp: float | None = None
    quality: float | None = None
    cost_usd: float | None = None
    completion_tokens: int | None = None
    status: str = "routed"  # "routed" | "completed" | "failed"
    tenant: str | None = None
    # For off-policy evaluation: float64 array [chosen arm, score mean × K, score sd × K] as bytes
    # (``Decision.moments()``); the chosen arm's propensity is P(its normal draw is the largest).
    # None for rows written before it was recorded.
    score_moments: bytes | None = None


@dataclass(slots=True)
class FeedbackRow:
    """One feedback signal; primary key (event_id, source): writing it again replaces it."""

    event_id: str
    source: str
    quality: float
    kind: str
    weight: float
    raw: str  # JSON text
    created: float


@dataclass(slots=True)
class StateRow:
    """An opaque state blob, e.g. key "category:coding", "arm:coding:gpt-5.4", "model:gpt-5.4"."""

    key: str
    value: bytes
    updated: float


@dataclass(slots=True)
class CacheRow:
    """A cached response (see ``bandit_router.cache``); ``key`` already includes the tenant."""

    key: str
    tenant: str
    model: str
    category: str
    body: bytes
    created: float
    expires: float


@runtime_checkable
class Store(Protocol):
    """The one narrow storage interface of the service (see the module docstring)."""

    async def start(self) -> None:
        """Open the database, create the schema, start the writer."""

    async def close(self) -> None:
        """Flush everything queued, then stop the writer.  Idempotent."""

    @property
    def queue_depth(self) -> int:
        """Operations queued and not yet taken by the writer."""

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more operations can be queued right now without ``StoreOverloaded``."""

    @property
    def failed_writes(self) -> int:
        """Operations the writer could not store (logged); fire-and-forget ones are lost."""

    # -- writes (all go through the single writer) --------------------------------------
    def record_decision(self, row: DecisionRow) -> None:
        """Queue a decision insert; fire-and-forget.  Raises StoreOverloaded when full."""

    def update_decision(self, event_id: str, **fields: object) -> None:
        """Queue an update of UPDATABLE_FIELDS; fire-and-forget.  Unknown ids are a logged no-op."""

    async def record_feedback(self, row: FeedbackRow, *, state: Sequence[StateRow] = ()) -> None:
        """Upsert feedback and its state rows in one transaction; resolves after COMMIT."""

    def save_state(self, rows: Sequence[StateRow]) -> None:
        """Queue a state upsert (checkpoint); within one batch the last row of a key wins."""

    def save_cache(self, row: CacheRow) -> None:
        """Queue a cache entry upsert; fire-and-forget."""

    def delete_cache(self, keys: Sequence[str]) -> None:
        """Queue the deletion of cache entries (evicted or expired); fire-and-forget."""

    def load_cache(self, now: float) -> list[CacheRow]:
        """Synchronous (startup): the cache entries that have not expired by ``now``."""

    async def flush(self) -> None:
        """Resolve once everything queued before this call is committed."""

    async def expire_decisions(self, before: float) -> int:
        """Delete decisions created before ``before`` (the caller's now - feedback window)
        and their feedback, through the writer; return the number of decisions deleted."""

    # -- reads (never wait on the writer) -------------------------------------------------
    def load_state(self, prefix: str = "") -> dict[str, bytes]:
        """Synchronous (startup): all state blobs whose key starts with ``prefix``."""

    async def get_decision(self, event_id: str) -> DecisionRow | None: ...

    async def feedback_for(self, event_id: str) -> list[FeedbackRow]: ...

    async def recent_decisions(self, category: str, limit: int = 1000) -> list[tuple[str, float]]:
        """(model, created) of the category's latest decisions, newest first."""

    async def decision_histogram(self, since: float, bucket_s: float) -> list[tuple[str, str, int, int]]:
        """(category, model, bucket, decisions) for the decisions created at or after ``since``,
        counted in ``bucket_s``-wide buckets (bucket 0 starts at ``since``); empty buckets omitted."""

    async def decision_counts(self) -> dict[tuple[str, str], int]:
        """Number of decisions (learned or not) per (category, model)."""

    async def feedback_counts(self) -> dict[tuple[str, str, str], int]:
        """Number of feedback rows per (category, model, source), joined to their decision."""

    async def mean_costs(self) -> dict[tuple[str, str], float]:
        """Mean cost_usd of completed decisions per (category, model)."""


# -- validation at enqueue time: a bad value raises to the caller, not later in the writer ------
def _text(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{name} must be str, got {type(v).__name__}")
    return v


def _real(v: Any, name: str) -> float:
    if type(v) is float and math.isfinite(v):  # the common case, without the slower ABC check
        return v
    if not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise TypeError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def _int(v: Any, name: str) -> int:
    if type(v) is int:
        return v
    if not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def _blob(v: Any, name: str) -> bytes:
    if type(v) is bytes:
        return v
    if not isinstance(v, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(v).__name__}")
    return bytes(v)


def _status(v: Any, name: str = "status") -> str:
    if v not in DECISION_STATUSES:
        raise ValueError(f"{name} must be one of {sorted(DECISION_STATUSES)}, got {v!r}")
    return str(v)


def _opt(check: Callable[[Any, str], T], v: Any, name: str) -> T | None:
    return None if v is None else check(v, name)


_UPDATE_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "cost_usd": lambda v, n: _opt(_real, v, n), "completion_tokens": lambda v, n: _opt(_int, v, n),
    "stamp": lambda v, n: _opt(_real, v, n), "quality": lambda v, n: _opt(_real, v, n), "status": _status,
}
assert set(_UPDATE_CHECKS) == UPDATABLE_FIELDS


def decision_record(r: DecisionRow) -> dict[str, Any]:
    """The row as plain, checked column values (numpy scalars become int/float)."""
    return {"event_id": _text(r.event_id, "event_id"), "created": _real(r.created, "created"),
            "category": _text(r.category, "category"), "model": _text(r.model, "model"), "x": _blob(r.x, "x"),
            "prompt_tokens": _int(r.prompt_tokens, "prompt_tokens"),
            "expected_cost": _real(r.expected_cost, "expected_cost"),
            "cost_weight": _real(r.cost_weight, "cost_weight"), "learn": bool(r.learn),
            "stamp": _opt(_real, r.stamp, "stamp"), "quality": _opt(_real, r.quality, "quality"),
            "cost_usd": _opt(_real, r.cost_usd, "cost_usd"),
            "completion_tokens": _opt(_int, r.completion_tokens, "completion_tokens"),
            "status": _status(r.status), "tenant": _opt(_text, r.tenant, "tenant"),
            "score_moments": _opt(_blob, r.score_moments, "score_moments")}


def decision_update(event_id: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}; updatable: {sorted(UPDATABLE_FIELDS)}")
    return _text(event_id, "event_id"), {k: _UPDATE_CHECKS[k](v, k) for k, v in fields.items()}


def feedback_record(r: FeedbackRow) -> dict[str, Any]:
    return {"event_id": _text(r.event_id, "event_id"), "source": _text(r.source, "source"),
            "quality": _real(r.quality, "quality"), "kind": _text(r.kind, "kind"), "weight": _real(r.weight, "weight"),
            "raw": _text(r.raw, "raw"), "created": _real(r.created, "created")}


def state_record(r: StateRow) -> dict[str, Any]:
    return {"key": _text(r.key, "key"), "value": _blob(r.value, "value"), "updated": _real(r.updated, "updated")}


def cache_record(r: CacheRow) -> dict[str, Any]:
    return {"key": _text(r.key, "key"), "tenant": _text(r.tenant, "tenant"), "model": _text(r.model, "model"),
            "category": _text(r.category, "category"), "body": _blob(r.body, "body"),
            "created": _real(r.created, "created"), "expires": _real(r.expires, "expires")}


def finite(v: Any, name: str) -> float:
    return _real(v, name)
