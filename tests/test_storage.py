"""The SQLite store: real database files, a real writer thread, a real SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bandit_router.storage import (
    DecisionRow,
    FeedbackRow,
    SQLiteStore,
    StateRow,
    Store,
    StoreClosed,
    StoreOverloaded,
    open_store,
)


def decision(event_id: str, created: float = 1000.0, category: str = "coding", model: str = "m1",
             **kw: object) -> DecisionRow:
    fields: dict[str, object] = {"x": np.arange(4, dtype=np.float64).tobytes(), "prompt_tokens": 12,
                                 "expected_cost": 0.001, "cost_weight": 1.0, "learn": True, **kw}
    return DecisionRow(event_id, created, category, model, **fields)  # type: ignore[arg-type]


def feedback(event_id: str, source: str = "user", quality: float = 0.8, created: float = 1001.0) -> FeedbackRow:
    return FeedbackRow(event_id, source, quality, "thumb", 1.0, '{"v": 1}', created)


def count(path: Path, table: str, where: str = "1", args: tuple = ()) -> int:
    """Counted on a brand-new connection of our own: sees exactly what has been committed."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0]


def run_sql(path: Path, script: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(script)


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection: the writer cannot BEGIN."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")  # released when the connection closes
        yield


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


async def park_writer(store: SQLiteStore) -> None:
    """Lock held elsewhere: the writer takes a plug and blocks on BEGIN; what follows stays queued."""
    store.save_state([StateRow("plug", b"", 0.0)])
    await wait_until(lambda: store.queue_depth == 0)
    await asyncio.sleep(0.05)


async def enqueue_task(store: SQLiteStore, coro: object) -> asyncio.Task:
    """Start an awaiting write and let it reach the queue (keeps queue order = call order)."""
    before = store.queue_depth
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    await wait_until(lambda: store.queue_depth > before or task.done())
    return task


@pytest_asyncio.fixture
async def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "router.db")
    await s.start()
    yield s
    await s.close()


@pytest.mark.asyncio
async def test_round_trip(store: SQLiteStore) -> None:
    assert isinstance(store, Store)
    store.record_decision(decision("e1", tenant="acme"))
    store.record_decision(decision("e2", created=1001.0, model="m2", learn=False))
    store.update_decision("e1", status="completed", cost_usd=np.float64(0.002), completion_tokens=np.int64(7))
    store.update_decision("e1", stamp=3.5, quality=0.75)
    store.update_decision("e2", status="failed")
    await store.record_feedback(feedback("e1"), state=[StateRow("arm:coding:m1", b"\x01\x02", 5.0)])
    store.save_state([StateRow("category:coding", b"cat", 6.0), StateRow("model:m1", b"mod", 6.0)])
    await store.flush()
    assert await store.get_decision("e1") == decision("e1", stamp=3.5, quality=0.75, cost_usd=0.002,
                                                      completion_tokens=7, status="completed", tenant="acme")
    assert await store.get_decision("e2") == decision("e2", created=1001.0, model="m2", learn=False, status="failed")
    assert await store.get_decision("nope") is None
    assert (await store.feedback_for("e1"), await store.feedback_for("e2")) == ([feedback("e1")], [])
    assert store.load_state() == {"arm:coding:m1": b"\x01\x02", "category:coding": b"cat", "model:m1": b"mod"}
    assert store.load_state("arm:") == {"arm:coding:m1": b"\x01\x02"}
    assert store.load_state("%") == {}  # a prefix, not a LIKE pattern
    assert await store.decision_counts() == {("coding", "m1"): 1, ("coding", "m2"): 1}
    assert await store.feedback_counts() == {("coding", "m1", "user"): 1}
    assert await store.mean_costs() == {("coding", "m1"): pytest.approx(0.002)}
    assert store.failed_writes == 0
    # bad values raise to the caller, at the call, and queue nothing
    for bad, msg in [(dict(category="x"), "cannot update"), (dict(status="done"), "status"),
                     (dict(quality="high"), "quality"), (dict(completion_tokens=1.5), "completion_tokens")]:
        with pytest.raises((ValueError, TypeError), match=msg):
            store.update_decision("e1", **bad)
    with pytest.raises(TypeError, match="x must be bytes"):
        store.record_decision(decision("e1", x=np.zeros(2)))
    with pytest.raises(TypeError, match="quality"):
        await store.record_feedback(feedback("e1", quality=float("nan")))
    assert store.queue_depth == 0


@pytest.mark.asyncio
async def test_feedback_upsert_replaces(store: SQLiteStore) -> None:
    await store.record_feedback(feedback("e1", quality=0.2))
    await store.record_feedback(feedback("e1", source="judge", quality=0.5))
    await store.record_feedback(feedback("e1", quality=0.9, created=2000.0))
    assert count(store.path, "feedback") == 2
    rows = {r.source: r for r in await store.feedback_for("e1")}
    assert rows["user"].quality == 0.9 and rows["user"].created == 2000.0 and rows["judge"].quality == 0.5


@pytest.mark.asyncio
async def test_feedback_ack_means_committed_with_its_state(store: SQLiteStore) -> None:
    db = store.path
    with write_locked(db):
        await park_writer(store)
        task = await enqueue_task(store, store.record_feedback(
            feedback("e1"), state=[StateRow("arm:coding:m1", b"s1", 1.0)]))
        await asyncio.sleep(0.2)
        assert not task.done()  # the writer cannot commit, so nothing is acknowledged
        assert count(db, "feedback") == 0
    await asyncio.wait_for(task, 10)
    # acknowledged => committed: a brand-new connection sees the feedback and its state
    assert count(db, "feedback", "event_id = 'e1'") == 1
    assert count(db, "state", "key = 'arm:coding:m1'") == 1
    # feedback and its state rows are one transaction: a failing state row takes the feedback with it
    run_sql(db, "CREATE TRIGGER no_bad BEFORE INSERT ON state WHEN NEW.key = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'bad state'); END")
    with pytest.raises(sqlite3.IntegrityError, match="bad state"):
        await store.record_feedback(feedback("e9"), state=[StateRow("good", b"g", 1.0), StateRow("bad", b"b", 1.0)])
    assert count(db, "feedback", "event_id = 'e9'") == 0 and count(db, "state", "key = 'good'") == 0
    await store.record_feedback(feedback("e9"), state=[StateRow("good", b"g", 1.0)])
    assert count(db, "feedback", "event_id = 'e9'") == 1 and count(db, "state", "key = 'good'") == 1


@pytest.mark.asyncio
async def test_state_keys_coalesce_within_a_batch(store: SQLiteStore) -> None:
    db = store.path
    run_sql(db, """CREATE TABLE audit(key TEXT);  -- every row write to `state`
        CREATE TRIGGER audit_i AFTER INSERT ON state BEGIN INSERT INTO audit VALUES (NEW.key); END;
        CREATE TRIGGER audit_u AFTER UPDATE ON state BEGIN INSERT INTO audit VALUES (NEW.key); END;""")
    with write_locked(db):
        await park_writer(store)
        store.save_state([StateRow("k", b"1", 1.0), StateRow("j", b"1", 1.0)])
        store.save_state([StateRow("k", b"2", 2.0)])
        task = await enqueue_task(store, store.record_feedback(feedback("e1"), state=[StateRow("k", b"3", 3.0)]))
        store.save_state([StateRow("k", b"4", 4.0), StateRow("j", b"2", 2.0)])
        assert store.queue_depth == 4
    await asyncio.wait_for(task, 10)
    await store.flush()
    assert store.load_state("k") == {"k": b"4"} and store.load_state("j") == {"j": b"2"}
    assert count(db, "audit", "key = 'k'") == 1 and count(db, "audit", "key = 'j'") == 1


@pytest.mark.asyncio
async def test_close_flushes_everything_queued(tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    s = SQLiteStore(db, batch_max=50)
    with pytest.raises(StoreClosed):  # not started yet
        s.record_decision(decision("early"))
    await s.start()
    with pytest.raises(StoreClosed):
        await s.start()
    for i in range(3000):
        s.record_decision(decision(f"e{i}", created=float(i)))
        s.update_decision(f"e{i}", status="completed", cost_usd=0.001)
    s.save_state([StateRow(f"arm:{i}", b"x", 1.0) for i in range(100)])
    await s.close()
    await s.close()  # idempotent
    for late in (lambda: s.record_decision(decision("late")), s.load_state):
        with pytest.raises(StoreClosed):
            late()
    assert count(db, "decisions", "status = 'completed'") == 3000 and count(db, "state") == 100
    again = SQLiteStore(db)
    await again.start()
    assert (await again.decision_counts())[("coding", "m1")] == 3000
    await again.close()


@pytest.mark.asyncio
async def test_expire_decisions(store: SQLiteStore) -> None:
    for i, t in enumerate([100.0, 200.0, 300.0]):
        store.record_decision(decision(f"e{i}", created=t))
        await store.record_feedback(feedback(f"e{i}"))
        await store.record_feedback(feedback(f"e{i}", source="judge"))
    store.save_state([StateRow("arm:coding:m1", b"s", 1.0)])
    assert await store.expire_decisions(250.0) == 2
    assert [await store.get_decision(f"e{i}") is None for i in range(3)] == [True, True, False]
    assert count(store.path, "feedback") == 2 and await store.feedback_for("e0") == []
    assert store.load_state() != {}  # state is not touched
    assert await store.expire_decisions(250.0) == 0


@pytest.mark.asyncio
async def test_recent_decisions_newest_first_with_limit(store: SQLiteStore) -> None:
    for i in [3, 1, 4, 0, 2]:
        store.record_decision(decision(f"c{i}", created=100.0 + i, model=f"m{i}"))
    store.record_decision(decision("other", created=500.0, category="math"))
    await store.flush()
    assert await store.recent_decisions("coding") == [(f"m{i}", 100.0 + i) for i in [4, 3, 2, 1, 0]]
    assert await store.recent_decisions("coding", limit=2) == [("m4", 104.0), ("m3", 103.0)]
    assert await store.recent_decisions("math") == [("m1", 500.0)]
    assert await store.recent_decisions("none") == []


@pytest.mark.asyncio
async def test_full_queue_raises_store_overloaded_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    s = SQLiteStore(db, max_queue=5, busy_timeout=0.05)
    await s.start()
    try:
        with write_locked(db):
            await park_writer(s)
            for i in range(5):
                s.record_decision(decision(f"e{i}"))
            assert s.queue_depth == 5
            for call in (lambda: s.record_decision(decision("rejected")), lambda: s.save_state([StateRow("k", b"", 1)]),
                         lambda: s.update_decision("e0", status="completed")):
                with pytest.raises(StoreOverloaded):
                    call()
            with pytest.raises(StoreOverloaded):
                await s.record_feedback(feedback("e0"))
            flushing = asyncio.ensure_future(s.flush())  # flush waits for room instead
            await asyncio.sleep(0.1)
            assert not flushing.done()
        await asyncio.wait_for(flushing, 10)
        assert count(db, "decisions") == 5 and await s.get_decision("rejected") is None
        assert count(db, "feedback") == 0 and s.failed_writes == 0
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_writer_error_fails_only_that_operation(store: SQLiteStore) -> None:
    db = store.path
    run_sql(db, "CREATE TRIGGER boom BEFORE INSERT ON feedback WHEN NEW.source = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'boom'); END")
    store.record_decision(decision("dup"))
    await store.flush()
    with write_locked(db):  # all of the following land in ONE batch
        await park_writer(store)
        good1 = await enqueue_task(store, store.record_feedback(feedback("e1")))
        bad = await enqueue_task(store, store.record_feedback(feedback("e1", source="boom")))
        store.record_decision(decision("dup", model="m2"))  # duplicate id: fire-and-forget failure
        store.record_decision(decision("e2"))
        good2 = await enqueue_task(store, store.record_feedback(feedback("e2")))
    await asyncio.wait_for(asyncio.gather(good1, good2), 10)
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        await bad
    await store.flush()
    assert store.failed_writes == 2
    assert count(db, "feedback") == 2 and await store.get_decision("e2") is not None
    assert (await store.get_decision("dup")).model == "m1"  # type: ignore[union-attr]
    await store.record_feedback(feedback("e3"))  # the writer is still alive
    assert count(db, "feedback") == 3


@pytest.mark.asyncio
async def test_wal_mode_and_full_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    open_writer = SQLiteStore._open_writer

    def spy(self: SQLiteStore):  # runs on the writer thread, which owns the connection
        db = open_writer(self)
        seen["synchronous"] = db.execute("PRAGMA synchronous").fetchone()[0]
        return db
    monkeypatch.setattr(SQLiteStore, "_open_writer", spy)
    s = SQLiteStore(tmp_path / "router.db")
    await s.start()
    await s.close()
    assert seen["synchronous"] == 2  # FULL: a commit is fsynced before it is acknowledged
    assert count(s.path, "pragma_journal_mode", "journal_mode = 'wal'") == 1  # fresh connection


def test_open_store(tmp_path: Path) -> None:
    assert open_store(tmp_path / "a.db").path == tmp_path / "a.db"
    assert open_store(str(tmp_path / "b.db")).path == tmp_path / "b.db"
    # SQLAlchemy convention: sqlite:/// + path, so an absolute path gives four slashes
    assert open_store(f"sqlite:///{tmp_path}/c.db").path == tmp_path / "c.db"
    assert open_store("sqlite:///data/r.db", max_queue=10).path == Path("data/r.db")
    for url, msg in [("postgresql://u@h/db", "not implemented yet"), ("mysql://h/db", "unsupported"),
                     ("sqlite://", "expected sqlite:///")]:
        with pytest.raises(ValueError, match=msg):
            open_store(url)


CHILD = """
import asyncio, sys, time
from bandit_router.storage import DecisionRow, FeedbackRow, SQLiteStore, StateRow
async def worker(store, w):  # 8 of these: acks come from batches of several feedbacks
    for n in range(10**6):
        i = f"{w}-{n}"
        store.record_decision(DecisionRow(i, time.time(), "c", "m", b"x", 1, 0.0, 1.0, True))
        await store.record_feedback(FeedbackRow(i, "u", 0.5, "k", 1.0, "{}", 1.0), state=[StateRow("arm:" + i, b"", 1)])
        print("acked", i, flush=True)
async def main(store):
    await store.start()
    await asyncio.gather(*(worker(store, w) for w in range(8)))
asyncio.run(main(SQLiteStore(sys.argv[1])))
"""


def test_acknowledged_feedback_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    acked: list[str] = []
    for line in proc.stdout:  # ends early if the child dies
        acked.append(line.split()[1])
        if len(acked) == 400:
            break
    proc.send_signal(signal.SIGKILL)  # midway: writes are in flight
    rest, _ = proc.communicate(timeout=10)
    acked += [ln.split()[1] for ln in rest.splitlines(keepends=True) if ln.endswith("\n")]
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 400
    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = {r[0] for r in conn.execute("SELECT event_id FROM feedback")}
        state = {r[0] for r in conn.execute("SELECT key FROM state")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    missing = [i for i in acked if i not in stored or "arm:" + i not in state]
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {missing[:5]}"


# -- property: any interleaving, any batch size, same outcome as applying the calls in order ----
EIDS = st.sampled_from(["a", "b", "c"])
OPS = st.lists(st.one_of(
    st.tuples(st.just("dec"), EIDS, st.integers(0, 9)),
    st.tuples(st.just("upd"), EIDS, st.sampled_from(["routed", "completed", "failed"]), st.integers(0, 9)),
    st.tuples(st.just("fb"), EIDS, st.sampled_from(["user", "judge"]), st.integers(0, 9)),
    st.tuples(st.just("state"), st.lists(st.tuples(st.sampled_from("kjm"), st.integers(0, 9)), min_size=1)),
    st.tuples(st.just("expire"), st.integers(0, 10)),
), max_size=25)


async def _run_ops(path: Path, ops: list[tuple], batch_max: int) -> None:
    model_d: dict[str, tuple] = {}  # what in-order execution leaves in each table
    model_f: dict[tuple[str, str], float] = {}
    model_s: dict[str, bytes] = {}
    s = SQLiteStore(path, batch_max=batch_max, busy_timeout=0.02)
    await s.start()
    tasks = []
    with write_locked(path):
        await park_writer(s)
        for op in ops:
            if op[0] == "dec":
                s.record_decision(decision(op[1], created=float(op[2])))
                model_d.setdefault(op[1], (float(op[2]), "routed", None))
            elif op[0] == "upd":
                s.update_decision(op[1], status=op[2], quality=op[3] / 10)
                if op[1] in model_d:
                    model_d[op[1]] = (model_d[op[1]][0], op[2], op[3] / 10)
            elif op[0] == "fb":
                tasks.append(await enqueue_task(s, s.record_feedback(feedback(op[1], op[2], quality=op[3] / 10))))
                model_f[(op[1], op[2])] = op[3] / 10
            elif op[0] == "state":
                s.save_state([StateRow(k, bytes([v]), 0.0) for k, v in op[1]])
                model_s.update((k, bytes([v])) for k, v in op[1])
            else:
                tasks.append(await enqueue_task(s, s.expire_decisions(float(op[1]))))
                gone = {e for e, d in model_d.items() if d[0] < op[1]}
                model_d = {e: d for e, d in model_d.items() if e not in gone}
                model_f = {k: q for k, q in model_f.items() if k[0] not in gone}
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    await s.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT event_id, created, status, quality FROM decisions")
        assert {r[0]: r[1:] for r in rows} == model_d
        assert {(e, src): q for e, src, q in conn.execute("SELECT event_id, source, quality FROM feedback")} == model_f
        assert {k: v for k, v in conn.execute("SELECT key, value FROM state WHERE key != 'plug'")} == model_s


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, batch_max=st.sampled_from([1, 3, 1000]))
@example(ops=[("upd", "a", "failed", 1), ("dec", "a", 5), ("fb", "a", "user", 2)], batch_max=1000)
@example(ops=[("dec", "a", 1), ("expire", 5), ("dec", "a", 9), ("fb", "a", "user", 3)], batch_max=1000)
@example(ops=[("dec", "a", 1), ("dec", "a", 2), ("upd", "a", "failed", 4), ("dec", "b", 3)], batch_max=1000)
def test_batched_writes_match_in_order_execution(ops: list[tuple], batch_max: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(_run_ops(Path(d) / "p.db", ops, batch_max))


@pytest.mark.asyncio
async def test_group_commit_lingers_for_unawaited_writes_only(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    real = SQLiteStore._write_batch

    def counting(self, db, ops):  # type: ignore[no-untyped-def]
        batches.append(len(ops))
        return real(self, db, ops)

    monkeypatch.setattr(SQLiteStore, "_write_batch", counting)
    s = SQLiteStore(tmp_path / "router.db", linger_s=0.3)
    await s.start()
    for i in range(600):  # trickled in over ~60 ms: one commit carries them (multi-row inserts of 256)
        s.record_decision(decision(f"e{i}", created=float(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.005)
    await wait_until(lambda: sum(batches) >= 600)
    assert len(batches) <= 2, batches
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await s.record_feedback(feedback("e1"))  # awaited: committed at once, no linger
    assert loop.time() - t0 < 0.25
    await s.close()
    assert count(tmp_path / "router.db", "decisions") == 600
