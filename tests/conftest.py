"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest_asyncio
from fleet import sim_client

from bandit_router.simulator import make_app as make_simulator


@pytest_asyncio.fixture
async def sim(aiohttp_server):  # type: ignore[no-untyped-def]
    """The simulator in process on loopback, answering at once (a fresh one per test)."""
    server = await aiohttp_server(make_simulator(seed=3))
    async with sim_client(server) as c:
        assert (await c.post("/admin/settings", json={"latency_scale": 0})).status == 200
    return server
