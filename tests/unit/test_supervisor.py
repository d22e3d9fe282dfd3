"""The supervisor stops everything it started: tasks, timers, and tasks that resist."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.supervisor import Supervisor
from tests.waiting import eventually


async def test_close_cancels_tasks_and_timers_it_started() -> None:
    supervisor = Supervisor()
    fired: list[str] = []
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = supervisor.spawn(forever(), name="forever")
    supervisor.call_later(30, lambda: fired.append("late"))
    await asyncio.wait_for(started.wait(), 5)
    assert supervisor.running == 2
    await supervisor.close(timeout_s=5)
    assert task.cancelled()
    assert supervisor.running == 0
    assert fired == []


async def test_a_timer_that_fires_is_forgotten() -> None:
    supervisor = Supervisor()
    fired = asyncio.Event()
    supervisor.call_later(0, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    assert supervisor.running == 0
    await supervisor.close()


async def test_a_cancelled_timer_never_fires() -> None:
    supervisor = Supervisor()
    fired: list[int] = []
    handle = supervisor.call_later(0, lambda: fired.append(1))
    supervisor.cancel_timer(handle)
    done = asyncio.Event()
    supervisor.call_later(0, done.set)
    await asyncio.wait_for(done.wait(), 5)
    assert fired == []
    await supervisor.close()


async def test_a_failed_task_is_logged_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor()

    async def fails() -> None:
        raise ValueError("boom")

    task = supervisor.spawn(fails(), name="refill-primary")
    with caplog.at_level(logging.ERROR, logger="app.supervisor"):
        await eventually(lambda: supervisor.running == 0, "the failed task to be forgotten", 5)
    assert task.done()
    assert "background task refill-primary failed: ValueError: boom" in caplog.text
    await supervisor.close()


async def test_a_task_that_ignores_cancel_is_waited_for_only_within_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    entered = asyncio.Event()

    async def stubborn_started() -> None:
        entered.set()
        await stubborn()

    task = supervisor.spawn(stubborn_started(), name="stubborn")
    await asyncio.wait_for(entered.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="app.supervisor"):
        await supervisor.close(timeout_s=0.2)
    assert loop.time() - started < 2
    assert "stubborn did not stop within 0.2 s" in caplog.text
    release.set()
    await asyncio.wait([task], timeout=5)


async def test_a_task_that_drops_one_cancel_still_ends_at_once() -> None:
    """A loop whose wait lost the cancellation (Python 3.11's asyncio.wait_for does, when what
    it waits for completes as the cancel comes: psycopg_pool's getconn) goes round again:
    close() ends it within moments, not at the end of its bound."""
    supervisor = Supervisor()
    rounds = 0
    entered = asyncio.Event()

    async def loop_dropping_first_cancel() -> None:
        nonlocal rounds
        dropped = False
        while True:
            rounds += 1
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if dropped:
                    raise
                dropped = True  # lost once, as wait_for loses it: on to the next round

    task = supervisor.spawn(loop_dropping_first_cancel(), name="schema-code")
    await asyncio.wait_for(entered.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await supervisor.close(timeout_s=5)
    assert task.cancelled()
    assert loop.time() - started < 1
    assert rounds <= 3


async def test_nothing_starts_after_close() -> None:
    supervisor = Supervisor()
    await supervisor.close()

    async def work() -> None:
        return None

    with pytest.raises(RuntimeError, match="closed"):
        supervisor.spawn(work(), name="late")
    with pytest.raises(RuntimeError, match="closed"):
        supervisor.call_later(0, lambda: None)


async def test_a_task_whose_failure_its_caller_reads_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A health probe that fails is news for the monitor that awaits it, not an error.
    supervisor = Supervisor()

    async def fails() -> None:
        raise OSError("connection refused")

    with caplog.at_level(logging.ERROR, logger="app.supervisor"):
        task = supervisor.spawn(fails(), name="probe-primary", log_failure=False)
        with pytest.raises(OSError, match="refused"):
            await task
        await eventually(lambda: supervisor.running == 0, "the task to be forgotten", 5)
    assert "probe-primary" not in caplog.text
    await supervisor.close()
