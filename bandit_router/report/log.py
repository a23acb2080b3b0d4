"""Reading the decision log: plain SQL on a read-only connection (the service's schema, no writes).

The report needs, per decision: when, which category and model, whether it was routed (``learn``)
or a pass-through, its combined quality (``decisions.quality``: the feedback signals combined, NULL
without feedback), its cost and tokens, and the logged score moments (``score_moments``, NULL on
rows written before they were recorded, and absent from a database never opened by a newer router).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_COLS = ("created", "category", "model", "learn", "quality", "cost_usd", "prompt_tokens", "completion_tokens",
         "status")


@dataclass
class Log:
    """The decisions, oldest first, as column arrays."""

    created: np.ndarray  # float64, unix seconds
    category: np.ndarray  # str (object)
    model: np.ndarray  # str (object)
    learn: np.ndarray  # bool: routed (True) or pass-through
    quality: np.ndarray  # float64, NaN without feedback
    cost: np.ndarray  # float64 $, NaN when unknown (not completed)
    prompt_tokens: np.ndarray  # int64, the router's estimate at decision time
    completion_tokens: np.ndarray  # float64, NaN when unknown
    status: np.ndarray  # str (object)
    moments: list[bytes | None]  # [chosen, score mean × K, score sd × K] as float64 bytes, or None
    feedback_by_source: dict[str, int] = field(default_factory=dict)
    has_moments_column: bool = True

    def __len__(self) -> int:
        return len(self.created)

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.category.tolist()))

    @property
    def models(self) -> list[str]:
        return sorted(set(self.model.tolist()))


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such database file")
    conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def read_log(path: str | Path, *, since: float | None = None, batch: int = 20_000,
             progress: Callable[[int, int], None] | None = None) -> Log:
    """All decisions (created >= ``since`` when given), oldest first, and feedback counts by source."""
    conn = connect_readonly(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "decisions" not in tables:
            raise ValueError(f"{path}: not a bandit-router database (no decisions table)")
        cols = {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}
        has_moments = "score_moments" in cols
        where, params = ("WHERE created >= ?", [since]) if since is not None else ("", [])
        total = conn.execute(f"SELECT count(*) FROM decisions {where}", params).fetchone()[0]
        select = ", ".join(_COLS) + (", score_moments" if has_moments else ", NULL")
        cur = conn.execute(f"SELECT {select} FROM decisions {where} ORDER BY created, rowid", params)
        rows: list[tuple] = []
        while chunk := cur.fetchmany(batch):
            rows.extend(chunk)
            if progress is not None:
                progress(len(rows), total)
        feedback: dict[str, int] = {}
        if "feedback" in tables:
            sql = ("SELECT f.source, count(*) FROM feedback f JOIN decisions d ON d.event_id = f.event_id "
                   f"{where.replace('created', 'd.created')} GROUP BY f.source")
            feedback = {s: n for s, n in conn.execute(sql, params)}
    finally:
        conn.close()
    cols_ = list(zip(*rows, strict=True)) if rows else [()] * (len(_COLS) + 1)

    def floats(v: tuple) -> np.ndarray:
        return np.array([np.nan if x is None else float(x) for x in v], dtype=float)

    return Log(created=np.array(cols_[0], dtype=float), category=np.array(cols_[1], dtype=object),
               model=np.array(cols_[2], dtype=object), learn=np.array(cols_[3], dtype=bool),
               quality=floats(cols_[4]), cost=floats(cols_[5]), prompt_tokens=np.array(cols_[6], dtype=np.int64),
               completion_tokens=floats(cols_[7]), status=np.array(cols_[8], dtype=object),
               moments=[None if b is None else bytes(b) for b in cols_[9]], feedback_by_source=feedback,
               has_moments_column=has_moments)
