"""SQLite backend of the ``Store`` interface (sqlite-utils, WAL, one batching writer thread).

All SQL lives here; the queue and the writer thread are in ``writer.py``.  Writes: every write
is an operation on one bounded ``queue.Queue``.  One writer thread owns the only read-write
connection.  It blocks on ``get()``, drains up to ``batch_max`` operations
without blocking, and applies them in ONE transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``,
``synchronous=FULL``, so a commit is on disk, not only in the OS cache).  Futures are resolved
only after that COMMIT, through ``loop.call_soon_threadsafe``.

Within a batch, operations are applied grouped by kind (one ``insert_all``/``upsert_all`` or
``executemany`` per kind), which keeps the outcome of in-order execution: decision inserts
precede updates, updates to one decision merge in order, the last feedback row of an
(event_id, source) and the last state row of a key win.  ``expire_decisions`` is a barrier.
If the grouped batch fails, it is rolled back and replayed one operation at a time, each in a
SAVEPOINT, so a bad operation fails alone and the rest of its batch still commits.  If BEGIN
or COMMIT fails, the whole batch fails.  The writer thread survives all of these.

Note: with sqlite-utils 4.x, ``with db.conn:`` does NOT make one transaction of several
``insert_all`` calls (each one BEGINs and COMMITs by itself when no transaction is open);
the explicit ``BEGIN IMMEDIATE`` below makes them nest as savepoints.

Reads use separate read-only connections (one per thread) and never wait on the writer (WAL).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from .base import CacheRow, DecisionRow, FeedbackRow, StoreClosed
from .writer import CACHE_DEL, CACHE_PUT, DECISION, EXPIRE, FEEDBACK, STATE, UPDATE, Op, QueuedStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# 1: the first schema; 2: decisions.score_moments (nullable BLOB), added in place to a version-1 file;
# 3: the cache table (created in place in an older file)
SCHEMA_VERSION = 3
_DECISION_COLS = ("event_id", "created", "category", "model", "x", "prompt_tokens", "expected_cost",
                  "cost_weight", "learn", "stamp", "quality", "cost_usd", "completion_tokens", "status", "tenant",
                  "score_moments")
_FEEDBACK_COLS = ("event_id", "source", "quality", "kind", "weight", "raw", "created")
_CACHE_COLS = ("key", "tenant", "model", "category", "body", "created", "expires")
_DECISION_ROW_SQL = f"({', '.join('?' for _ in _DECISION_COLS)})"
_ROWS_PER_INSERT = 256  # 256 × 16 parameters, well under SQLite's 32,766


def _insert_decisions(db: Database, decisions: list[dict[str, Any]]) -> None:
    """Multi-row INSERTs: one sqlite3_step per 256 rows. ``executemany`` steps once per row, and
    each step releases and re-takes the GIL, a handoff with the busy event loop every row."""
    for i in range(0, len(decisions), _ROWS_PER_INSERT):
        chunk = decisions[i:i + _ROWS_PER_INSERT]
        sql = (f"INSERT INTO decisions ({', '.join(_DECISION_COLS)}) VALUES "
               + ", ".join([_DECISION_ROW_SQL] * len(chunk)))
        db.conn.execute(sql, [d[c] for d in chunk for c in _DECISION_COLS])


def _segments(ops: list[Op]) -> Iterator[list[Op]]:
    """Split a batch where grouping by kind could differ from in-order execution: around
    ``expire`` (it must see exactly the writes before it) and before an insert of a decision
    that an earlier operation of the segment updated (inserts are applied before updates)."""
    seg: list[Op] = []
    updated: set[str] = set()
    for op in ops:
        if op.kind == EXPIRE or (op.kind == DECISION and op.data["event_id"] in updated):
            if seg:
                yield seg
            seg, updated = [], set()
            if op.kind == EXPIRE:
                yield [op]
                continue
        elif op.kind == UPDATE:
            updated.add(op.data[0])
        seg.append(op)
    if seg:
        yield seg


def _apply(db: Database, ops: list[Op]) -> None:
    """Apply one segment grouped by kind, with the same outcome as applying it in order."""
    if ops[0].kind == EXPIRE:
        (op,) = ops
        op.result = db.execute("SELECT count(*) FROM decisions WHERE created < ?", [op.data]).fetchone()[0]
        db["feedback"].delete_where("event_id IN (SELECT event_id FROM decisions WHERE created < ?)", [op.data])
        db["decisions"].delete_where("created < ?", [op.data])
        return
    decisions: list[dict[str, Any]] = []
    updates: dict[str, dict[str, Any]] = {}
    feedback: dict[tuple[str, str], dict[str, Any]] = {}
    state: dict[str, dict[str, Any]] = {}
    cache: dict[str, dict[str, Any] | None] = {}  # key -> row, or None: delete
    for op in ops:
        if op.kind == DECISION:
            decisions.append(op.data)
        elif op.kind == UPDATE:
            updates.setdefault(op.data[0], {}).update(op.data[1])
        elif op.kind == FEEDBACK:
            fb, rows = op.data
            feedback[(fb["event_id"], fb["source"])] = fb
            state.update((r["key"], r) for r in rows)
        elif op.kind == STATE:
            state.update((r["key"], r) for r in op.data)
        elif op.kind == CACHE_PUT:
            cache[op.data["key"]] = op.data
        elif op.kind == CACHE_DEL:
            cache.update((k, None) for k in op.data)
    if decisions:  # the hot path: no per-chunk column discovery
        _insert_decisions(db, decisions)
    if updates:
        # Raw UPDATE: Table.update() costs an extra SELECT per row and raises on a missing row;
        # column names come from the UPDATABLE_FIELDS allowlist, values are bound.
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        for event_id, fields in updates.items():
            cols = tuple(sorted(fields))
            groups.setdefault(cols, []).append([fields[c] for c in cols] + [event_id])
        matched = 0
        for cols, params in groups.items():
            sets = ", ".join(f"{c} = ?" for c in cols)
            matched += db.conn.executemany(f"UPDATE decisions SET {sets} WHERE event_id = ?", params).rowcount
        if matched < len(updates):
            log.warning("update_decision: %d of %d event ids not found", len(updates) - matched, len(updates))
    if feedback:
        db["feedback"].upsert_all(list(feedback.values()), pk=("event_id", "source"))
    if state:
        db["state"].upsert_all(list(state.values()), pk="key")
    if cache:  # the last operation on a key wins, as in order
        if dead := [[k] for k, r in cache.items() if r is None]:
            db.conn.executemany("DELETE FROM cache WHERE key = ?", dead)
        if rows := [r for r in cache.values() if r is not None]:
            db["cache"].upsert_all(rows, pk="key")


class SQLiteStore(QueuedStore):
    """``Store`` on one SQLite file (WAL; the writer connection uses synchronous=FULL).

    ``max_queue``: queued operations before enqueueing raises ``StoreOverloaded``;
    ``batch_max``: operations per transaction; ``busy_timeout``: seconds SQLite waits for a lock
    held by another connection (the writer then logs and keeps waiting -- it never drops).
    """

    _SYNCHRONOUS = "FULL"  # a benchmark may override it to compare

    def __init__(self, path: str | Path, *, max_queue: int = 100_000, batch_max: int = 2000,
                 busy_timeout: float = 5.0, linger_s: float = 0.01) -> None:
        super().__init__(path, max_queue=max_queue, batch_max=batch_max, linger_s=linger_s)
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    # -- writer side (runs on the writer thread) ---------------------------------------------------
    def _open_writer(self) -> Database:
        db = Database(self.path)
        db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        db.enable_wal()
        db.execute(f"PRAGMA synchronous = {self._SYNCHRONOUS}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {version}; this code knows {SCHEMA_VERSION}")
        with db.atomic():
            db["decisions"].create(
                {"event_id": str, "created": float, "category": str, "model": str, "x": bytes, "prompt_tokens": int,
                 "expected_cost": float, "cost_weight": float, "learn": bool, "stamp": float, "quality": float,
                 "cost_usd": float, "completion_tokens": int, "status": str, "tenant": str, "score_moments": bytes},
                pk="event_id", defaults={"status": "routed"}, if_not_exists=True,
                not_null={"created", "category", "model", "x", "prompt_tokens", "expected_cost", "cost_weight",
                          "learn", "status"})
            if "score_moments" not in db["decisions"].columns_dict:  # migration 1 -> 2 (older rows stay NULL)
                db.execute("ALTER TABLE decisions ADD COLUMN score_moments BLOB")
            db["decisions"].create_index(["category", "created"], index_name="idx_decisions_category_created",
                                         if_not_exists=True)
            db["decisions"].create_index(["created"], index_name="idx_decisions_created", if_not_exists=True)
            db["feedback"].create(
                {"event_id": str, "source": str, "quality": float, "kind": str, "weight": float, "raw": str,
                 "created": float}, pk=("event_id", "source"), not_null=set(_FEEDBACK_COLS), if_not_exists=True)
            db["state"].create({"key": str, "value": bytes, "updated": float}, pk="key",
                               not_null={"value", "updated"}, if_not_exists=True)
            db["cache"].create({"key": str, "tenant": str, "model": str, "category": str, "body": bytes,
                                "created": float, "expires": float}, pk="key", not_null=set(_CACHE_COLS) - {"key"},
                               if_not_exists=True)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return db

    def _close_writer(self, conn: Database) -> None:
        conn.close()

    def _begin(self, db: Database) -> None:
        while True:  # another process holding the write lock is transient: wait, never drop
            try:
                db.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
                log.warning("storage writer: database locked by another connection, %d queued", self._q.qsize())

    def _write_batch(self, db: Database, ops: list[Op]) -> None:
        try:
            self._begin(db)
            try:
                for seg in _segments(ops):
                    _apply(db, seg)
                db.conn.execute("COMMIT")
                return
            except Exception as exc:
                db.rollback()
                log.warning("storage writer: batch of %d failed (%r); replaying one by one", len(ops), exc)
            self._begin(db)
            for op in ops:
                db.conn.execute("SAVEPOINT op")
                try:
                    _apply(db, [op])
                except Exception as exc:
                    if not db.conn.in_transaction:  # the error destroyed the transaction: fail the batch
                        raise
                    db.conn.execute("ROLLBACK TO op")
                    op.error = exc
                db.conn.execute("RELEASE op")
            db.conn.execute("COMMIT")
        except Exception as exc:  # BEGIN/COMMIT failed: nothing of this batch is stored
            db.rollback()
            log.error("storage writer: batch of %d not stored: %r", len(ops), exc)
            for op in ops:
                op.error = exc

    # -- reads: read-only connections, one per thread ------------------------------------------------
    def _close_readers(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    def _check_readable(self) -> None:
        if self._state not in ("running", "closing"):
            raise StoreClosed(f"store is {self._state}")

    def _reader(self) -> Database:
        self._check_readable()
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            with self._lock:
                self._readers.append(conn)
            db = self._local.db = Database(conn, execute_plugins=False)
        return db

    async def _read(self, fn: Callable[[Database], T]) -> T:
        self._check_readable()
        return await asyncio.to_thread(lambda: fn(self._reader()))

    def load_state(self, prefix: str = "") -> dict[str, bytes]:
        sql = "SELECT key, value FROM state WHERE substr(key, 1, length(?)) = ?"
        return {k: bytes(v) for k, v in self._reader().execute(sql, [prefix, prefix])}

    def load_cache(self, now: float) -> list[CacheRow]:
        sql = f"SELECT {', '.join(_CACHE_COLS)} FROM cache WHERE expires > ? ORDER BY created"
        return [CacheRow(k, t, m, c, bytes(b), cr, ex) for k, t, m, c, b, cr, ex in
                self._reader().execute(sql, [float(now)])]

    async def get_decision(self, event_id: str) -> DecisionRow | None:
        def q(db: Database) -> DecisionRow | None:
            sql = f"SELECT {', '.join(_DECISION_COLS)} FROM decisions WHERE event_id = ?"
            row = db.execute(sql, [event_id]).fetchone()
            if row is None:
                return None
            rec = dict(zip(_DECISION_COLS, row, strict=True))
            rec["learn"] = bool(rec["learn"])
            return DecisionRow(**rec)
        return await self._read(q)

    async def feedback_for(self, event_id: str) -> list[FeedbackRow]:
        sql = f"SELECT {', '.join(_FEEDBACK_COLS)} FROM feedback WHERE event_id = ? ORDER BY created, source"
        return await self._read(lambda db: [FeedbackRow(*r) for r in db.execute(sql, [event_id])])

    async def recent_decisions(self, category: str, limit: int = 1000) -> list[tuple[str, float]]:
        sql = "SELECT model, created FROM decisions WHERE category = ? ORDER BY created DESC, rowid DESC LIMIT ?"
        return await self._read(lambda db: [(m, c) for m, c in db.execute(sql, [category, int(limit)])])

    async def decision_histogram(self, since: float, bucket_s: float) -> list[tuple[str, str, int, int]]:
        if not bucket_s > 0:
            raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
        sql = ("SELECT category, model, CAST((created - ?) / ? AS INTEGER) AS b, count(*) FROM decisions "
               "WHERE created >= ? GROUP BY category, model, b ORDER BY category, model, b")
        args = [float(since), float(bucket_s), float(since)]
        return await self._read(lambda db: [(c, m, int(b), n) for c, m, b, n in db.execute(sql, args)])

    async def decision_counts(self) -> dict[tuple[str, str], int]:
        sql = "SELECT category, model, count(*) FROM decisions GROUP BY category, model"
        return await self._read(lambda db: {(c, m): n for c, m, n in db.execute(sql)})

    async def feedback_counts(self) -> dict[tuple[str, str, str], int]:
        sql = ("SELECT d.category, d.model, f.source, count(*) FROM feedback f "
               "JOIN decisions d ON d.event_id = f.event_id GROUP BY d.category, d.model, f.source")
        return await self._read(lambda db: {(c, m, s): n for c, m, s, n in db.execute(sql)})

    async def mean_costs(self) -> dict[tuple[str, str], float]:
        sql = ("SELECT category, model, avg(cost_usd) FROM decisions WHERE status = 'completed' "
               "AND cost_usd IS NOT NULL GROUP BY category, model")
        return await self._read(lambda db: {(c, m): v for c, m, v in db.execute(sql)})
