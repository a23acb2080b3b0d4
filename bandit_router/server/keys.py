"""Typed application keys."""

from aiohttp import web

from ..config import RouterConfig
from ..service import Service

CONFIG = web.AppKey("config", RouterConfig)
DB_PATH = web.AppKey("db_path", str)
SERVICE = web.AppKey("service", Service)
