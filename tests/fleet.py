"""A small in-process fleet for the reliability and metrics tests: the simulator answering at once,
and a router config where gpt-5.4 is the clear favourite for coding and glm-5 the runner-up, so the
first choice and the fallback are known."""

from __future__ import annotations

import aiohttp

CODING = [{"role": "user", "content": "Write a Python function that sorts a list."}]
FLEET = ("gpt-5.4", "glm-5", "gemini-3.1-pro")


def fleet_config(sim_port: int, **reliability: object) -> dict:
    models = [{"name": n, "base_url": f"http://127.0.0.1:{sim_port}/v1", "input_price": 1.0, "output_price": 2.0,
               "first_byte_timeout_s": 0.5,
               "priors": {"coding": {"quality": {"gpt-5.4": 0.99, "glm-5": 0.6}.get(n, 0.2), "strength": 1000}}}
              for n in FLEET]
    return {"models": models, "bandit": {"seed": 1, "cost_weight": 0.0},
            "reliability": {"backoff_s": 0.01, "breaker_cooldown_s": 0.5, **reliability}}


def sim_client(sim) -> aiohttp.ClientSession:  # type: ignore[no-untyped-def]
    return aiohttp.ClientSession(base_url=f"http://127.0.0.1:{sim.port}")


async def sim_set(sim, model: str, change: dict) -> None:  # type: ignore[no-untyped-def]
    """Drift one simulated model at once (``POST /admin/models/{name}``)."""
    async with sim_client(sim) as c:
        r = await c.post(f"/admin/models/{model}", json=change)
        assert r.status == 200, await r.text()
