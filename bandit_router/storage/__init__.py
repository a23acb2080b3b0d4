"""Persistence behind one narrow interface: ``Store`` (see ``base.py``), SQLite today.

    store = open_store("sqlite:///data/router.db")   # or a plain path
    await store.start()
    ...
    await store.close()                                # flushes everything queued
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    DECISION_STATUSES,
    UPDATABLE_FIELDS,
    CacheRow,
    DecisionRow,
    FeedbackRow,
    StateRow,
    Store,
    StoreClosed,
    StoreOverloaded,
)
from .sqlite import SQLiteStore

__all__ = [
    "DECISION_STATUSES", "UPDATABLE_FIELDS", "CacheRow", "DecisionRow", "FeedbackRow", "SQLiteStore", "StateRow",
    "Store", "StoreClosed", "StoreOverloaded", "open_store",
]


def open_store(url_or_path: str | Path, **options: Any) -> SQLiteStore:
    """A (not yet started) store for a filesystem path or a URL.

    ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` follow the SQLAlchemy
    convention (three slashes, then the path).  ``options`` go to the backend constructor
    (``max_queue``, ``batch_max``, ``busy_timeout``).  ``postgresql://`` is not implemented yet.
    """
    if isinstance(url_or_path, Path):
        return SQLiteStore(url_or_path, **options)
    scheme, sep, rest = str(url_or_path).partition("://")
    if not sep:
        path = str(url_or_path)
    elif scheme.lower() == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(f"expected sqlite:///path/to/file.db, got {url_or_path!r}")
        path = rest[1:]
    elif scheme.lower().split("+")[0] in ("postgresql", "postgres"):
        raise ValueError(f"PostgreSQL storage is not implemented yet ({scheme}://...); use sqlite:///path")
    else:
        raise ValueError(f"unsupported storage URL scheme {scheme!r}; use a path or sqlite:///path")
    if path in ("", ":memory:") or path.startswith("file:"):
        raise ValueError(f"the store needs a database file, got {url_or_path!r}")
    return SQLiteStore(path, **options)
