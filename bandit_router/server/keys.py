"""Typed application keys."""

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ..config import RouterConfig
from ..service import Service

CONFIG = web.AppKey("config", RouterConfig)
DB_PATH = web.AppKey("db_path", str)
SERVICE = web.AppKey("service", Service)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
