"""The HTTP shell: aiohttp handlers that validate, call the service, and answer."""

from .app import make_app

__all__ = ["make_app"]
