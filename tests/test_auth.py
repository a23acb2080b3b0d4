"""Authentication: the admin bearer token, the local-only admin mode, client API keys for /v1/*,
and secrets (admin token, client keys, upstream keys) kept out of logs, error bodies and admin output."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import httpx
import openai
import pytest
import yaml
from aiohttp import web

from bandit_router.config import EXAMPLE_CONFIG, parse_config
from bandit_router.procs import free_port, start, stderr_text, stop
from bandit_router.server import make_app
from bandit_router.server.auth import ADMIN_DISABLED, ADMIN_TOKEN_ENV, RedactingFilter, is_loopback
from bandit_router.simulator import make_app as make_simulator

CODING = [{"role": "user", "content": "Write a Python function that sorts a list."}]
TOKEN = "admin-token-0123456789abcdef"
OTHER = "another-token-0123456789abcdef"


def _config(base_url: str = "http://127.0.0.1:9/v1", **extra) -> dict:
    return {"models": [{"name": "gpt-5.4", "base_url": base_url, "input_price": 1.0, "output_price": 2.0}],
            "bandit": {"seed": 1}, **extra}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)


async def _assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status == status
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


# --- the admin token ------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_no_token_configured_refuses_admin_but_not_health_or_v1(aiohttp_client, tmp_path):
    client = await aiohttp_client(make_app(parse_config(_config()), db_path=tmp_path / "a.db"))
    for method, path in (("GET", "/admin/arms"), ("POST", "/admin/models/gpt-5.4/disable"),
                         ("GET", "/admin/nowhere")):
        resp = await client.request(method, path, headers=_bearer(TOKEN))
        err = await _assert_error(resp, 403, "admin_disabled")
        assert err["message"] == ADMIN_DISABLED
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v1/models")).status == 200  # no client keys: /v1/* stays open


@pytest.mark.asyncio
async def test_wrong_or_missing_token_401_right_token_200(aiohttp_client, tmp_path):
    cfg = parse_config(_config(admin={"token": TOKEN}))
    client = await aiohttp_client(make_app(cfg, db_path=tmp_path / "a.db"))
    for headers in ({}, _bearer(OTHER), _bearer(TOKEN[:-1]), _bearer(TOKEN + "x"), {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        resp = await client.get("/admin/arms", headers=headers)
        await _assert_error(resp, 401, "invalid_admin_token")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # an unknown admin path says nothing about what exists without the token
    await _assert_error(await client.get("/admin/nowhere"), 401)
    ok = await client.get("/admin/arms", headers=_bearer(TOKEN))
    assert ok.status == 200 and "categories" in await ok.json()
    r = await client.post("/admin/models/gpt-5.4/disable", headers={"Authorization": f"bearer  {TOKEN} "})
    assert r.status == 200 and (await r.json())["enabled"] is False
    assert (await client.get("/admin/nowhere", headers=_bearer(TOKEN))).status == 404
    assert (await client.get("/healthz")).status == 200


@pytest.mark.asyncio
async def test_env_var_overrides_config(aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, OTHER)
    cfg = parse_config(_config(admin={"token": TOKEN}))
    client = await aiohttp_client(make_app(cfg, db_path=tmp_path / "a.db"))
    assert (await client.get("/admin/arms", headers=_bearer(OTHER))).status == 200
    await _assert_error(await client.get("/admin/arms", headers=_bearer(TOKEN)), 401)


@pytest.mark.asyncio
async def test_env_var_alone_enables_admin(aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    client = await aiohttp_client(make_app(parse_config(_config()), db_path=tmp_path / "a.db"))
    assert (await client.get("/admin/arms", headers=_bearer(TOKEN))).status == 200
    await _assert_error(await client.get("/admin/arms"), 401)


def test_a_short_env_token_stops_start_up(monkeypatch, tmp_path):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "short")
    with pytest.raises(ValueError, match=ADMIN_TOKEN_ENV):
        make_app(parse_config(_config()), db_path=tmp_path / "a.db")


# --- local-only admin -----------------------------------------------------------------------------

def _pretend_remote(address: str):
    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        return await handler(request.clone(remote=address))

    return middleware


@pytest.mark.asyncio
async def test_local_only_serves_loopback_peers_without_a_token(aiohttp_client, tmp_path):
    client = await aiohttp_client(make_app(parse_config(_config()), db_path=tmp_path / "a.db",
                                           admin_local_only=True))
    assert (await client.get("/admin/arms")).status == 200  # the test client connects from 127.0.0.1


@pytest.mark.asyncio
async def test_local_only_refuses_other_peers(aiohttp_client, tmp_path):
    app = make_app(parse_config(_config(admin={"token": TOKEN})), db_path=tmp_path / "a.db", admin_local_only=True)
    app.middlewares.insert(0, _pretend_remote("203.0.113.7"))
    client = await aiohttp_client(app)
    # not even with the right token: local-only with a token needs both
    await _assert_error(await client.get("/admin/arms", headers=_bearer(TOKEN)), 403, "admin_local_only")
    assert (await client.get("/healthz")).status == 200


def test_loopback_hosts():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", None, "10.0.0.1", "192.168.1.2", "example.com", "::ffff:10.0.0.1"):
        assert not is_loopback(host), host


def test_serve_local_only_refuses_a_non_loopback_host(tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(EXAMPLE_CONFIG)
    for host in ("0.0.0.0", "::"):
        out = subprocess.run([sys.executable, "-m", "bandit_router.cli", "serve", "--config", str(path),
                              "--host", host, "--port", str(free_port()), "--admin-local-only"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert "--admin-local-only needs a loopback --host" in out.stderr and repr(host) in out.stderr


# --- client API keys ------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_client_keys_with_the_openai_sdk(aiohttp_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CLIENT_KEYS", " key-from-env-1 , key-from-env-2,, ")
    sim = await aiohttp_server(make_simulator(seed=3))
    cfg = parse_config(_config(f"http://127.0.0.1:{sim.port}/v1", admin={"token": TOKEN},
                               auth={"api_keys": ["key-from-config"], "api_keys_env": "TEST_CLIENT_KEYS"}))
    router = await aiohttp_server(make_app(cfg, db_path=tmp_path / "a.db"))
    base = f"http://127.0.0.1:{router.port}"

    wrong = openai.AsyncOpenAI(base_url=base + "/v1", api_key="key-from-env", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        await wrong.chat.completions.create(model="auto", messages=CODING)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
    await wrong.close()

    for key in ("key-from-config", "key-from-env-1", "key-from-env-2"):
        right = openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        c = await right.chat.completions.create(model="auto", messages=CODING)
        assert c.model == "gpt-5.4" and c.choices[0].message.content
        await right.close()

    async with httpx.AsyncClient(base_url=base) as http:
        for path in ("/v1/route", "/v1/feedback", "/v1/nowhere"):
            r = await http.post(path, json={})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await http.get("/healthz")).status_code == 200
        # a client key is not an admin token, and the admin token is not a client key
        assert (await http.get("/admin/arms", headers=_bearer("key-from-config"))).status_code == 401
        assert (await http.get("/v1/models", headers=_bearer(TOKEN))).status_code == 401
        assert (await http.get("/admin/arms", headers=_bearer(TOKEN))).status_code == 200


# --- secrets stay secret --------------------------------------------------------------------------

def _echo_upstream(status: int) -> web.Application:
    """An upstream that refuses every call and, carelessly, echoes the key it was sent."""
    async def chat(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {sent}",
                                            "type": "invalid_request_error", "code": "invalid_api_key"}},
                                 status=status)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [400, 401, 404, 500])
async def test_an_upstream_echoing_its_key_never_reaches_the_client(aiohttp_server, aiohttp_client, tmp_path,
                                                                    monkeypatch, caplog, status):
    secret = "sk-upstream-echoed-secret-5151"
    monkeypatch.setenv("TEST_ECHOED_KEY", secret)
    upstream = await aiohttp_server(_echo_upstream(status))
    cfg = _config(f"http://127.0.0.1:{upstream.port}/v1")
    cfg["models"][0]["api_key_env"] = "TEST_ECHOED_KEY"
    client = await aiohttp_client(make_app(parse_config(cfg), db_path=tmp_path / "a.db", admin_local_only=True))
    for stream in (False, True):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING, "stream": stream})
        text = await r.text()
        assert r.status >= 400 and secret not in text
    arms = await (await client.get("/admin/arms")).text()
    assert secret not in arms and secret not in caplog.text


@pytest.mark.asyncio
async def test_error_bodies_are_scrubbed_of_every_configured_secret(aiohttp_client):
    """The middleware's last line of defence, whatever a handler put in an error message."""
    from bandit_router.server.auth import AuthSettings
    from bandit_router.server.guard import make_guard

    secrets = ("sk-upstream-1111111111", "client-key-2222222222", TOKEN)

    async def leaky(request: web.Request) -> web.Response:
        status = int(request.query.get("status", "502"))
        return web.json_response({"error": {"message": " / ".join(secrets)}}, status=status)

    settings = AuthSettings(secrets=secrets)
    app = web.Application(middlewares=[make_guard(settings)])
    app.router.add_get("/leak", leaky)
    client = await aiohttp_client(app)
    text = await (await client.get("/leak")).text()
    assert not any(s in text for s in secrets) and text.count("[redacted]") == 3
    assert "sk-upstream-1111111111" in await (await client.get("/leak?status=200")).text()  # 2xx untouched
    assert "sk-upstream" not in repr(settings) and TOKEN not in repr(settings)


def test_redacting_filter_scrubs_messages_arguments_and_tracebacks():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(["sk-log-secret-1", "sk-log-secret-2"]))
    logger = logging.getLogger("test_auth.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("key %s and %r", "sk-log-secret-1", {"k": "sk-log-secret-2"})
        try:
            raise RuntimeError("boom sk-log-secret-2")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "sk-log-secret" not in text and "boom [redacted]" in text and "key [redacted]" in text


def test_serve_keeps_every_secret_out_of_its_log_and_admin_output(tmp_path):
    """One real `serve` process: admin token, client keys and an upstream key all configured; the
    traffic includes wrong and right credentials and upstream failures; then grep everything."""
    upstream_key, client_key, admin_token = "sk-upstream-fake-8c1e2f", "client-key-fake-77aa91", "admin-" + "z" * 20
    sim_port, port = free_port(), free_port()
    sim = start(["simulate", "--port", str(sim_port), "--latency-scale", "0"], f"http://127.0.0.1:{sim_port}/healthz")
    cfg = yaml.safe_load(EXAMPLE_CONFIG)
    for m in cfg["models"]:
        m["base_url"] = f"http://127.0.0.1:{sim_port}/v1"
        m["api_key_env"] = "FAKE_UPSTREAM_KEY"
    cfg["auth"] = {"api_keys_env": "FAKE_CLIENT_KEYS"}
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(cfg))
    url = f"http://127.0.0.1:{port}"
    env = {ADMIN_TOKEN_ENV: admin_token, "FAKE_CLIENT_KEYS": client_key, "FAKE_UPSTREAM_KEY": upstream_key}
    responses: list[str] = []
    try:
        router = start(["serve", "--config", str(tmp_path / "router.yaml"), "--port", str(port), "--access-log",
                        "--db", str(tmp_path / "state.db")], url + "/healthz", env=env)
        try:
            ok = openai.OpenAI(base_url=url + "/v1", api_key=client_key, max_retries=0)
            assert ok.chat.completions.create(model="auto", messages=CODING).choices[0].message.content
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url + "/v1", api_key=client_key[:-1], max_retries=0).models.list()
            # make every upstream fail: 502s from the router, and whatever it logs about them
            for m in cfg["models"]:
                httpx.post(f"http://127.0.0.1:{sim_port}/admin/models/{m['name']}", json={"fail_rate": 1.0})
            with pytest.raises(openai.APIStatusError):
                ok.chat.completions.create(model="auto", messages=CODING)
            for headers in ({}, _bearer(admin_token[:-1]), _bearer(client_key), _bearer(admin_token)):
                for method, path in (("GET", "/admin/arms"), ("POST", "/admin/models/gpt-5.4/disable"),
                                     ("POST", "/admin/models/nope/enable")):
                    r = httpx.request(method, url + path, headers=headers)
                    responses.append(r.text)
                    assert r.status_code == (401 if headers.get("Authorization") != f"Bearer {admin_token}"
                                             else 404 if "nope" in path else 200)
            responses.append(httpx.get(url + "/healthz").text)
            responses.append(httpx.get(url + "/v1/models", headers=_bearer(client_key)).text)
        finally:
            stop(router)
        log = stderr_text(router)
    finally:
        stop(sim)
    assert "admin API: bearer token from BANDIT_ROUTER_ADMIN_TOKEN" in log and "client API keys: 1" in log
    assert '"GET /admin/arms' in log  # the access log was on
    for secret in (upstream_key, client_key, admin_token, admin_token[:-1], client_key[:-1]):
        assert secret not in log
        assert all(secret not in text for text in responses)
