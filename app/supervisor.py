"""One owner for the service's background work.

Every task and timer that outlives the call that started it (health probes, pool refills,
promotion timers, backend cancels and terminations, lane runners, stream producers, the
metrics publisher) is started here. The lifespan owns the one `Supervisor`, as
psycopg_pool's pool owns its workers and scheduler, and `close()` stops everything it
started: timers are cancelled, tasks are cancelled and awaited within a bound. A task that
fails is logged once, with its name, instead of being lost as "Task exception was never
retrieved".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long close() waits for a cancelled task before cancelling it again.
_RECANCEL_S = 0.05


class Supervisor:
    """Starts tasks and timers, keeps them, and stops them all on `close()`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(
        self, work: Coroutine[Any, Any, T], name: str, *, log_failure: bool = True
    ) -> asyncio.Task[T]:
        """Run `work` in the background until it ends or `close()` stops it. A failure is
        logged unless `log_failure` is False: whoever awaits the task reads it (a health
        probe that fails is news for the monitor, not an error of the service)."""
        if self._closed:
            work.close()
            raise RuntimeError(f"the supervisor is closed; {name} was not started")
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished if log_failure else self._tasks.discard)
        return task

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Call `callback` after `delay_s` seconds, unless `close()` comes first."""
        if self._closed:
            raise RuntimeError("the supervisor is closed; no timer was set")
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback()

        handle = asyncio.get_running_loop().call_later(max(0.0, delay_s), fire)
        self._timers.add(handle)
        return handle

    def cancel_timer(self, handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    @property
    def running(self) -> int:
        """Tasks started and not yet ended, plus timers set and not yet fired."""
        return len(self._tasks) + len(self._timers)

    def names(self) -> list[str]:
        return sorted(task.get_name() for task in self._tasks)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every timer and task; wait up to `timeout_s` for the tasks to end."""
        self._closed = True
        for handle in list(self._timers):
            handle.cancel()
        self._timers.clear()
        pending = {task for task in self._tasks if task is not asyncio.current_task()}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending:
            # Cancelled again until it ends: on Python 3.11, asyncio.wait_for (psycopg_pool's
            # waits use it) drops a cancellation that arrives as what it waits for completes
            # (CPython gh-86296), and the task would go on to its next round.
            for task in pending:
                task.cancel()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            _, pending = await asyncio.wait(pending, timeout=min(left, _RECANCEL_S))
        if pending:
            for task in pending:
                logger.warning(
                    "background task %s did not stop within %.1f s", task.get_name(), timeout_s
                )

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.error(
                "background task %s failed: %s: %s", task.get_name(), type(error).__name__, error
            )
