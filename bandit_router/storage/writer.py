"""The single-writer machinery shared by backends (no SQL here).

``QueuedStore`` owns one bounded thread-safe ``queue.Queue`` and one writer thread.  The writer
blocks on ``get()``, drains up to ``batch_max`` more operations without blocking, hands the
batch to the backend's ``_write_batch`` (which applies it in ONE transaction and sets each
operation's ``result``/``error``), and only then resolves the batch's futures through
``loop.call_soon_threadsafe`` -- so an awaited write is acknowledged only once committed.
A failing batch never kills the thread.  A sentinel, queued by ``close()`` after every accepted
operation, stops it.

Group commit: when every operation of a batch is fire-and-forget (decision rows, updates,
checkpoints: nobody awaits them), the writer lingers ``linger_s`` (10 ms) before committing, so
one transaction carries many rows instead of one each; an awaited write (feedback) never waits.

Backpressure: the enqueueing calls raise ``StoreOverloaded`` when the queue is full (nothing is
queued, nothing is dropped silently); ``flush``/``expire_decisions``/``close`` wait for room.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import (
    CacheRow,
    DecisionRow,
    FeedbackRow,
    StateRow,
    StoreClosed,
    StoreOverloaded,
    cache_record,
    decision_record,
    decision_update,
    feedback_record,
    finite,
    state_record,
)

log = logging.getLogger(__name__)

DECISION, UPDATE, FEEDBACK, STATE, EXPIRE, FLUSH, CACHE_PUT, CACHE_DEL = range(8)
_KIND_NAMES = ("record_decision", "update_decision", "record_feedback", "save_state", "expire", "flush",
               "save_cache", "delete_cache")
_STOP = object()


class Op:
    """One queued operation; ``data`` is already validated (see ``base.*_record``)."""

    __slots__ = ("kind", "data", "loop", "fut", "result", "error")

    def __init__(self, kind: int, data: Any, loop: asyncio.AbstractEventLoop | None = None,
                 fut: asyncio.Future[Any] | None = None) -> None:
        self.kind, self.data, self.loop, self.fut = kind, data, loop, fut
        self.result: Any = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        d = self.data
        what: object = ""
        if self.kind == DECISION:
            what = d["event_id"]
        elif self.kind == UPDATE:
            what = d[0]
        elif self.kind == FEEDBACK:
            what = (d[0]["event_id"], d[0]["source"])
        elif self.kind == STATE:
            what = [r["key"] for r in d]
        return f"{_KIND_NAMES[self.kind]}({what})"


_Settled = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


def _resolve(items: _Settled) -> None:
    for fut, result, error in items:
        if not fut.done():  # the awaiter may have been cancelled; the write happened anyway
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)


class QueuedStore:
    """Queue, writer thread, lifecycle and the write half of ``Store``.

    Backends implement ``_open_writer`` (runs on the writer thread, returns its connection),
    ``_write_batch(conn, ops)``, ``_close_writer(conn)`` and ``_close_readers()``.
    """

    def __init__(self, path: str | Path, *, max_queue: int = 100_000, batch_max: int = 2000,
                 linger_s: float = 0.01) -> None:
        if max_queue < 1 or batch_max < 1 or not 0.0 <= linger_s <= 1.0:
            raise ValueError("max_queue and batch_max must be >= 1, linger_s in [0, 1]")
        self.path = Path(path)
        self.batch_max = batch_max
        self.linger_s = linger_s
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._state = "new"  # new -> running -> closing -> closed
        self._thread: threading.Thread | None = None
        self._failed = 0

    # -- backend hooks ----------------------------------------------------------------------------
    def _open_writer(self) -> Any:
        raise NotImplementedError

    def _write_batch(self, conn: Any, ops: list[Op]) -> None:
        raise NotImplementedError

    def _close_writer(self, conn: Any) -> None:
        raise NotImplementedError

    def _close_readers(self) -> None:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        with self._lock:
            if self._state != "new":
                raise StoreClosed(f"store is {self._state}; start() works once")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(target=self._run, args=(ready,), name=f"store-writer:{self.path.name}",
                                  daemon=True)
        thread.start()
        await asyncio.wrap_future(ready)  # raises if the database could not be opened
        self._thread = thread
        with self._lock:
            self._state = "running"
        atexit.register(self._close_sync)  # flush at interpreter exit if close() was never awaited

    async def close(self) -> None:
        with self._lock:
            state = self._state
            if state == "new":
                self._state = "closed"
            elif state == "running":
                self._state = "closing"  # from now on nothing more is queued
        if state == "running":
            atexit.unregister(self._close_sync)
            await asyncio.to_thread(self._q.put, _STOP)  # may wait for room; lands after every accepted op
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._state = "closed"
        self._close_readers()

    def _close_sync(self) -> None:
        with self._lock:
            if self._state != "running":
                return
            self._state = "closing"
        self._q.put(_STOP)
        assert self._thread is not None
        self._thread.join()
        self._state = "closed"
        self._close_readers()

    @property
    def queue_depth(self) -> int:
        return self._q.qsize()

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more operations fit in the queue now. Only the event loop enqueues, so a
        check followed by enqueueing with no ``await`` between cannot be overtaken."""
        return self._q.qsize() + n <= self._q.maxsize

    @property
    def failed_writes(self) -> int:
        return self._failed

    # -- enqueueing -----------------------------------------------------------------------------------
    def _put(self, op: Op) -> None:
        with self._lock:
            if self._state != "running":
                raise StoreClosed(f"store is {self._state}")
            try:
                self._q.put_nowait(op)
            except queue.Full:
                raise StoreOverloaded(f"storage write queue is full ({self._q.maxsize} operations)") from None

    async def _submit(self, kind: int, data: Any, *, wait_for_room: bool) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        op = Op(kind, data, loop, fut)
        while True:
            try:
                self._put(op)
                break
            except StoreOverloaded:
                if not wait_for_room:
                    raise
                await asyncio.sleep(0.005)
        return await fut

    def record_decision(self, row: DecisionRow) -> None:
        self._put(Op(DECISION, decision_record(row)))

    def update_decision(self, event_id: str, **fields: Any) -> None:
        data = decision_update(event_id, fields)
        if data[1]:
            self._put(Op(UPDATE, data))

    def save_state(self, rows: Sequence[StateRow]) -> None:
        records = [state_record(r) for r in rows]
        if records:
            self._put(Op(STATE, records))

    def save_cache(self, row: CacheRow) -> None:
        self._put(Op(CACHE_PUT, cache_record(row)))

    def delete_cache(self, keys: Sequence[str]) -> None:
        if keys:
            self._put(Op(CACHE_DEL, [str(k) for k in keys]))

    async def record_feedback(self, row: FeedbackRow, *, state: Sequence[StateRow] = ()) -> None:
        data = (feedback_record(row), [state_record(r) for r in state])
        await self._submit(FEEDBACK, data, wait_for_room=False)

    async def flush(self) -> None:
        await self._submit(FLUSH, None, wait_for_room=True)

    async def expire_decisions(self, before: float) -> int:
        return int(await self._submit(EXPIRE, finite(before, "before"), wait_for_room=True))

    # -- the writer thread ------------------------------------------------------------------------------
    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._open_writer()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while True:
                batch = [self._q.get()]
                self._drain(batch)
                if self.linger_s and len(batch) < self.batch_max and batch[-1] is not _STOP and all(
                        op.fut is None for op in batch):
                    # nobody awaits these writes: wait a moment so one commit carries many of them
                    time.sleep(self.linger_s)
                    self._drain(batch)
                stop = batch[-1] is _STOP
                ops: list[Op] = batch[:-1] if stop else batch
                if ops:
                    try:
                        self._write_batch(conn, ops)
                    except Exception as exc:  # defensive: a backend bug must not kill the writer
                        log.exception("storage writer: unexpected error")
                        for op in ops:
                            op.error = exc
                    self._settle(ops)
                if stop:
                    return
        finally:
            self._close_writer(conn)

    def _drain(self, batch: list[Any]) -> None:
        while len(batch) < self.batch_max and batch[-1] is not _STOP:
            try:
                batch.append(self._q.get_nowait())
            except queue.Empty:
                return

    def _settle(self, ops: list[Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, _Settled] = {}
        lost = []
        for op in ops:
            if op.error is not None:
                self._failed += 1
                if op.fut is None:
                    lost.append(op)
            if op.fut is not None and op.loop is not None:
                by_loop.setdefault(op.loop, []).append((op.fut, op.result, op.error))
        if lost:
            log.error("storage writer: %d queued write(s) NOT stored, e.g. %s",
                      len(lost), "; ".join(f"{op!r}: {op.error!r}" for op in lost[:5]))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
