"""The books: what a request leaves to do once its answer is out (its decision row, the cost
charged, metrics, latency estimates, graders), kept off the answer's path.

A serving loop is busiest right after an answer, when the next request may already be waiting;
it is idlest while a request waits on its upstream. So the books wait: they run when the loop
next waits on an upstream (:meth:`Books.run_soon`, called just before a request awaits its
provider), or before another endpoint reads what they write (:meth:`Books.run`: every endpoint
but the chat completion), or after ``max_delay_s`` whatever happens. At one connection this takes
them out of the next request's time (``benchmarks/overhead.py``). What a decision reads (the
output-length and latency estimates) is not kept in the books: it is updated on the loop's next
turn, so the next chat request decides with it.

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
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._soon = False

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` later, within ``max_delay_s``, in the order added."""
        self._pending.append((fn, args))
        loop = asyncio.get_running_loop()
        # one timer at a time, left to fire even when the books ran before it (one on a loop that
        # has since closed never fires: a new one then)
        if self._timer is None or self._timer_loop is not loop:
            self._timer, self._timer_loop = loop.call_later(self.max_delay_s, self._deadline), loop

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
