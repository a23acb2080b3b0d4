"""The books: work an answer leaves, run when the loop next waits on an upstream, before another
endpoint reads, or after a short delay."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bandit_router.books import Books


@pytest.mark.asyncio
async def test_the_books_wait_then_run_in_order_within_the_delay():
    books, done = Books(max_delay_s=0.02), []
    books.add(done.append, 1)
    books.add(done.append, 2)
    await asyncio.sleep(0)
    assert done == [] and len(books) == 2  # not on the loop's next turn: the next request may be waiting
    await asyncio.sleep(0.05)
    assert done == [1, 2] and len(books) == 0


@pytest.mark.asyncio
async def test_run_soon_runs_them_on_the_next_turn_and_run_at_once():
    books, done = Books(max_delay_s=10.0), []
    books.add(done.append, "a")
    books.run_soon()
    books.run_soon()  # once is enough
    assert done == []
    await asyncio.sleep(0)
    assert done == ["a"]
    books.add(done.append, "b")
    books.run()
    assert done == ["a", "b"]
    books.run_soon()  # nothing pending: nothing scheduled
    await asyncio.sleep(0)
    assert done == ["a", "b"]


@pytest.mark.asyncio
async def test_a_failing_entry_is_logged_and_the_rest_still_run(caplog):
    books, done = Books(), []

    def broken() -> None:
        raise RuntimeError("disk on fire")
    books.add(broken)
    books.add(done.append, "after")
    with caplog.at_level(logging.ERROR, logger="bandit_router"):
        books.run()
    assert done == ["after"] and "broken failed" in caplog.text and "disk on fire" in caplog.text


@pytest.mark.asyncio
async def test_another_endpoint_reads_what_an_answer_left(aiohttp_server, aiohttp_client, tmp_path):
    """An answer's decision row and metrics are books; /admin/arms and /metrics run them first."""
    from bandit_router.config import parse_config
    from bandit_router.server import make_app
    from bandit_router.server.keys import SERVICE
    from bandit_router.simulator import make_app as make_simulator

    sim = await aiohttp_server(make_simulator(seed=1))
    cfg = parse_config({"models": [{"name": "gpt-5.4", "base_url": f"http://127.0.0.1:{sim.port}/v1",
                                    "input_price": 1.0, "output_price": 2.0}]})
    app = make_app(cfg, db_path=tmp_path / "books.db", admin_local_only=True)
    client = await aiohttp_client(app)
    app[SERVICE].books.max_delay_s = 60.0  # only a reader can run them now
    r = await client.post("/v1/chat/completions", json={"model": "auto",
                                                        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status == 200 and len(app[SERVICE].books) > 0
    arms = await (await client.get("/admin/arms")).json()
    assert len(app[SERVICE].books) == 0
    row = arms["categories"][r.headers["X-Router-Category"]]["gpt-5.4"]
    assert row["decisions"] == 1 and row["mean_cost_usd"] > 0
    metrics = await (await client.get("/metrics")).text()
    assert 'bandit_router_requests_total{category="' in metrics


@pytest.mark.asyncio
async def test_the_next_chat_request_decides_with_what_the_last_answer_taught(tmp_path):
    """The estimates a decision reads (output length, latency) do not wait in the books: once the
    loop has turned, the next request's expected cost and latency include the last answer."""
    from bandit_router.config import parse_config
    from bandit_router.providers.base import Completion, Usage
    from bandit_router.server.app import build_router
    from bandit_router.service import Hints, Service
    from bandit_router.storage import open_store

    class Slow:
        async def complete(self, body):
            await asyncio.sleep(0.05)
            return Completion({"choices": [{"message": {"role": "assistant", "content": "ok"}}]},
                              Usage(20, 4000, 0))

    cfg = parse_config({"models": [{"name": "m", "base_url": "http://127.0.0.1:1/v1", "input_price": 1.0,
                                    "output_price": 2.0, "latency_s": 20.0}]})
    store = open_store(tmp_path / "b.db")
    await store.start()
    service = Service(cfg, build_router(cfg), store, {"m": Slow()})
    service.books.max_delay_s = 60.0
    messages = [{"role": "user", "content": "hi"}]
    hints = Hints(max_latency_s=30.0)
    first = service.decide(messages, hints, record=False)
    await service.complete(first, {"model": "auto", "messages": messages})
    await asyncio.sleep(0)  # the loop turns (the next request's handler would start after this)
    assert len(service.books) > 0  # the row and metrics still wait
    before = service.decide(messages, hints, record=False)
    service.books.run()
    after = service.decide(messages, hints, record=False)
    assert before.expected_cost == after.expected_cost > first.expected_cost  # 4,000 tokens, not 256
    assert before.latency_s == after.latency_s < first.latency_s  # 0.05 s answered, not the 20 s prior
    await service.flush()
    await store.close()
