"""Who may call what: a bearer token for ``/admin/*``, optional client API keys for ``/v1/*``, and
keeping every secret (those and the upstream keys) out of error bodies and logs.

* ``/admin/*`` needs ``Authorization: Bearer <token>``; the token is the environment variable
  ``BANDIT_ROUTER_ADMIN_TOKEN``, else the config's ``admin.token``. With neither, the admin API is
  refused (403), unless the app is made with ``admin_local_only=True`` (``serve --admin-local-only``,
  only allowed on a loopback host): then admin requests from a loopback peer need no token. A
  local-only app with a token needs both.
* ``/v1/*`` needs ``Authorization: Bearer <key>`` when ``auth.api_keys`` or the variable named by
  ``auth.api_keys_env`` (comma-separated) yields any key; otherwise it is open.
* ``/healthz`` is always open.

Tenants (what the response cache is scoped by and budgets are kept per): a client key's tenant is the
name it is listed under in ``auth.tenant_keys_env`` (tenant -> variable with comma-separated keys), or
else ``key-`` and the first 12 hex digits of its SHA-256. With no client keys configured, the tenant
is the ``X-Router-Tenant`` header (self-declared: nothing is authenticated), else ``default``.

Comparisons are constant time (``hmac.compare_digest`` on SHA-256 digests, so neither the content
nor the length of a secret leaks, and every client key is compared whichever matches).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from ..config import RouterConfig
from .errors import error

log = logging.getLogger("bandit_router")

ADMIN_TOKEN_ENV = "BANDIT_ROUTER_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16  # as the config's admin.token
ADMIN_DISABLED = (f"admin API disabled: set {ADMIN_TOKEN_ENV} or admin.token, or start with --admin-local-only")
LOOPBACK_NAMES = ("localhost",)
REDACTED = "[redacted]"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def is_loopback(host: str | None) -> bool:
    """``127.0.0.0/8``, ``::1`` (also IPv4-mapped, e.g. ``::ffff:127.0.0.1``) or ``localhost``."""
    if not host:
        return False
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def admin_token(config: RouterConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin token: ``BANDIT_ROUTER_ADMIN_TOKEN`` (when set and not empty), else ``admin.token``."""
    env = os.environ if environ is None else environ
    token = (env.get(ADMIN_TOKEN_ENV) or "").strip()
    if token:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{ADMIN_TOKEN_ENV}: must be at least {MIN_TOKEN_CHARS} characters "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return token
    return config.admin.token


def client_keys(config: RouterConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """The accepted client API keys: ``auth.api_keys``, the comma-separated ``auth.api_keys_env`` and
    the tenants' keys (``auth.tenant_keys_env``)."""
    return list(client_tenants(config, environ))


def key_tenant(key: str) -> str:
    """The tenant of a key listed under no tenant name: derived from its digest, never the key."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def client_tenants(config: RouterConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each accepted client key and its tenant."""
    env = os.environ if environ is None else environ

    def split(var: str | None) -> list[str]:
        return [k.strip() for k in (env.get(var) or "").split(",") if k.strip()] if var else []

    out = {k: key_tenant(k) for k in [k.strip() for k in config.auth.api_keys if k.strip()]
           + split(config.auth.api_keys_env)}
    for tenant, var in config.auth.tenant_keys_env.items():
        out.update((k, tenant) for k in split(var))
    return out


def upstream_keys(config: RouterConfig) -> list[str]:
    return [k for m in config.models if (k := m.api_key())]


@dataclass(frozen=True)
class AuthSettings:
    """What :func:`refuse` checks, and the secrets :func:`scrub` removes. ``repr`` never shows a secret."""

    admin_digest: bytes | None = field(default=None, repr=False)
    admin_local_only: bool = False
    client_digests: tuple[bytes, ...] = field(default=(), repr=False)
    client_tenants: tuple[str, ...] = ()  # the tenant of each client digest, in the same order
    secrets: tuple[str, ...] = field(default=(), repr=False)  # scrubbed from error bodies

    @classmethod
    def from_config(cls, config: RouterConfig, *, admin_local_only: bool = False,
                    environ: Mapping[str, str] | None = None) -> AuthSettings:
        token = admin_token(config, environ)
        tenants = client_tenants(config, environ)
        secrets = [s for s in (token, *tenants, *upstream_keys(config)) if s]
        return cls(admin_digest=_digest(token) if token else None, admin_local_only=admin_local_only,
                   client_digests=tuple(_digest(k) for k in tenants), client_tenants=tuple(tenants.values()),
                   secrets=tuple(sorted(set(secrets), key=len, reverse=True)))

    @property
    def clients_need_keys(self) -> bool:
        return bool(self.client_digests)


def bearer(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), else None."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _matches(token: str | None, digests: Iterable[bytes]) -> bool:
    return _match(token, digests) is not None


def _match(token: str | None, digests: Iterable[bytes]) -> int | None:
    """The index of the digest ``token`` matches, or None."""
    given = _digest(token or "")
    found = None
    for i, d in enumerate(digests):  # no early exit: the time does not say which key matched
        if hmac.compare_digest(given, d):
            found = i
    return found if token is not None else None


TENANT = web.RequestKey("tenant", str)
TENANT_HEADER = "X-Router-Tenant"
DEFAULT_TENANT = "default"
_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def tenant_of(request: web.Request) -> str:
    """The request's tenant, as :func:`refuse` set it (``default`` when nothing did)."""
    return request.get(TENANT, DEFAULT_TENANT)


def _area(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return _area_of(request.path, None if resource is None else resource.canonical)


@functools.lru_cache(maxsize=1024)  # by path: the same few paths, over and over
def _area_of(path: str, canonical: str | None) -> str | None:
    paths = [path] if canonical is None else [path, canonical]
    if "/metrics" in paths:  # Prometheus scrapes with the admin token (scrape config: authorization)
        return "admin"
    for area in ("admin", "v1"):
        if any(p == f"/{area}" or p.startswith(f"/{area}/") for p in paths):
            return area
    return None


def _unauthorized(message: str, code: str) -> web.Response:
    resp = error(401, message, code=code)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="bandit-router"'
    return resp


def redact(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def scrub(resp: web.StreamResponse, secrets: tuple[str, ...]) -> web.StreamResponse:
    """An error body never carries a secret, whatever an upstream echoed back."""
    if not secrets or resp.status < 400 or not isinstance(resp, web.Response) or not isinstance(resp.body, bytes):
        return resp
    text = resp.body.decode("utf-8", "surrogateescape")
    clean = redact(text, secrets)
    if clean != text:
        resp.body = clean.encode("utf-8", "surrogateescape")
    return resp


def _dashboard_page(request: web.Request) -> bool:
    """The dashboard's page is static code with no data (its script sends the bearer token on every
    data request), so a browser may load it from a plain link; local-only and "admin disabled"
    still apply to it."""
    return request.method in ("GET", "HEAD") and request.path == "/admin/dashboard"


def refuse(request: web.Request, settings: AuthSettings) -> web.Response | None:
    """The refusal of a request its caller may not make (401, 403, or 422 for a bad tenant header),
    else None. Sets the request's tenant (:func:`tenant_of`). Run for every request by
    :mod:`.guard`."""
    area = _area(request)
    if area == "admin":
        if settings.admin_local_only and not is_loopback(request.remote):
            return error(403, "admin API is local-only (--admin-local-only): requests must come from a "
                              "loopback address", code="admin_local_only")
        if settings.admin_digest is not None:
            if not _matches(bearer(request), (settings.admin_digest,)) and not _dashboard_page(request):
                return _unauthorized("admin API: missing or wrong bearer token (Authorization: Bearer <token>)",
                                     "invalid_admin_token")
        elif not settings.admin_local_only:
            return error(403, ADMIN_DISABLED, code="admin_disabled")
    elif area == "v1" and settings.clients_need_keys:
        i = _match(bearer(request), settings.client_digests)
        if i is None:
            return _unauthorized("missing or incorrect API key (Authorization: Bearer <key>)", "invalid_api_key")
        request[TENANT] = settings.client_tenants[i]
    elif area == "v1":
        claimed = request.headers.get(TENANT_HEADER)
        if claimed is not None:
            if not 0 < len(claimed) <= 64 or not set(claimed) <= _TENANT_CHARS:
                return error(422, f"{TENANT_HEADER}: {claimed[:80]!r} must be 1-64 letters, digits, '_', '.' "
                                  "or '-'", code="invalid_tenant")
            request[TENANT] = claimed
    return None


class RedactingFilter(logging.Filter):
    """Replaces any of ``secrets`` in a log record's message and traceback with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        clean = redact(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def install_log_redaction(secrets: Iterable[str], logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach a :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger)."""
    f = RedactingFilter(secrets)
    for h in (logger or logging.getLogger()).handlers:
        h.addFilter(f)
    return f


def log_summary(settings: AuthSettings, config: RouterConfig, environ: Mapping[str, str] | None = None) -> None:
    """One line per setting at start-up; counts and names, never a secret."""
    env = os.environ if environ is None else environ
    if settings.admin_digest is not None:
        source = ADMIN_TOKEN_ENV if (env.get(ADMIN_TOKEN_ENV) or "").strip() else "admin.token"
        log.info("admin API: bearer token from %s%s", source,
                 ", loopback peers only" if settings.admin_local_only else "")
    elif settings.admin_local_only:
        log.warning("admin API: local-only, no token (loopback peers only)")
    else:
        log.warning("%s", ADMIN_DISABLED)
    name = config.auth.api_keys_env
    if settings.clients_need_keys:
        log.info("client API keys: %d accepted for /v1/*", len(settings.client_digests))
    elif name:
        log.warning("auth.api_keys_env names %s, but it is unset or empty and auth.api_keys is empty: "
                    "/v1/* is open", name)
