"""The books: what a request leaves to do once its answer is out (its decision row, the cost
charged, metrics, latency estimates, graders), kept off the answer's path.

A serving loop is busiest right after an answer, when the next request may already be waiting;
it is idlest while a request waits on its upstream. So the books wait: they run when the loop
next waits on an upstream (:meth:`Books.run_soon`, called just before a request awaits its
provider), or before anything reads what they write (:meth:`Books.run`: the other endpoints), or
after ``max_delay_s`` whatever happens. At one connection this takes them out of the next request's
time altogether (``benchmarks/overhead.py``).

Pure scheduling on the running event loop; one instance per service.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("bandit_router")


class Books:
    def __init__(self, max_delay_s: float = 0.002) -> None:
        self.max_delay_s = max_delay_s
        self._pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` later, within ``max_delay_s``, in the order added."""
        self._pending.append((fn, args))
        if self._timer is None:  # (one timer at a time, left to fire even when the books ran before it)
            self._timer = asyncio.get_running_loop().call_later(self.max_delay_s, self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        self.run()

    def run_soon(self) -> None:
        """The caller is about to wait (on an upstream): run the books on the loop's next turn."""
        if self._pending and not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """Run every pending entry now (before reading anything they write). An entry that fails is
        logged; the others still run."""
        self._soon = False
        while self._pending:
            fn, args = self._pending.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("the books after an answer: %s failed", getattr(fn, "__qualname__", fn))
