"""The units of one `Executor.map` on the local pool (core/pool.py `map_pool`), shared by the caller's thread, which
runs units itself, and the pool's dispatcher thread: which are left, their results, how often each one's process was
lost, and whether the pool can no longer start processes."""
from __future__ import annotations

import threading
from collections import Counter, deque

from flame_fitting.core.workers import UnitResult


class UnitQueue:
    """The units of one `Executor.map` on a local pool, shared by this process's thread and the dispatcher thread:
    indices not yet taken, results, how often each unit's worker was lost, and the progress bar."""

    def __init__(self, items: list, bar):
        self.items, self.bar = items, bar
        self.pending, self.results, self.n_lost = deque(range(len(items))), {}, Counter()
        self.running, self.closed, self.broken = 0, False, None  # broken: why no more units are handed out
        self.error: BaseException | None = None  # what stopped the dispatcher thread early (map_pool raises it)
        self.cond = threading.Condition()

    def take(self, wait: bool) -> int | None:
        """The next unit to run, or None: none left (wait=False), or none left and none running elsewhere that could
        come back to the queue (wait=True; it waits for either); None at once after `fail`."""
        with self.cond:
            while wait and not self.pending and self.running and not self.closed:
                self.cond.wait()
            if not self.pending or self.closed or self.broken:
                return None
            self.running += 1
            return self.pending.popleft()

    def finish(self, i: int, result: UnitResult) -> None:
        with self.cond:
            self.results[i], self.running = result, self.running - 1
            self.bar.update()
            self.cond.notify_all()

    def lost(self, i: int, retries: int) -> None:
        """Unit `i`'s worker process died: back to the queue, or recorded as lost after `retries` re-runs."""
        with self.cond:
            self.n_lost[i] += 1
            self.running -= 1
            if self.n_lost[i] > retries:
                self.results[i] = UnitResult(self.items[i], False, None, f"WorkerLost: the worker process died "
                                             f"{self.n_lost[i]} times while this unit was running")
                self.bar.update()
            else:
                self.pending.append(i)
            self.cond.notify_all()

    def requeue(self, i: int) -> None:
        """Unit `i` never started (its pool process died before it could be sent): back to the queue, not counted as
        lost."""
        with self.cond:
            self.running -= 1
            self.pending.append(i)
            self.cond.notify_all()

    def has_pending(self) -> bool:
        with self.cond:
            return bool(self.pending) and not self.closed and not self.broken

    def fail(self, why: str) -> None:
        """The pool cannot start processes: no unit not yet taken is handed out any more (those running finish)."""
        with self.cond:
            self.broken = why
            self.cond.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        """No unit is taken any more; `error`: why the dispatcher thread stopped early (raised by `map_pool`)."""
        with self.cond:
            self.closed, self.error = True, self.error or error
            self.cond.notify_all()
