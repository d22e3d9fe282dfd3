"""How a multiplexing lane (app/sql/multiplex.py) answers its jobs: `Answers` settles a
batch's jobs from their units' replies as they come back, and the errors a job may get (a
write that did not run, a write whose outcome is unknown, a failure of the lane itself).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection

from app.errors import MirrorpoolError, OutcomeUnknown, QueryTimeout
from app.redaction import redactor
from app.sql import pipeline
from app.sql.checkout import Checkout
from app.sql.lane_jobs import Job
from app.sql.results import StatementResult

if TYPE_CHECKING:
    from app.sql.multiplex import Lane


class Answers:
    """A batch's jobs, answered from their units' replies as they come back: together at the
    batch's end while the batch is quick (answers that trickle out bring requests that
    trickle in, in smaller batches), and each as its own Sync comes once the batch has run
    longer than a quick statement takes, so a slow statement holds up none before it."""

    def __init__(
        self, lane: Lane, held: Checkout, jobs: list[Job], first: int, started: float
    ) -> None:
        self._lane = lane
        self._held = held
        self._jobs = jobs
        self._first = first  # the index of the first job's unit (the batch's clock first)
        self._last = started
        self._eager = started + lane.options.quick_s
        self._seen: set[int] = set()
        self._ready: list[tuple[int, pipeline.UnitReply, float]] = []
        # Jobs whose answer needs a type looked up on the connection, after the batch.
        self._later: list[tuple[Job, pipeline.UnitReply]] = []
        # (the loop's clock is time.monotonic(); uvloop's too, to the millisecond)
        self._timer = asyncio.get_running_loop().call_later(lane.options.quick_s, self._flush)

    def settled(self, index: int, unit: pipeline.UnitReply) -> None:
        """A unit's Sync came back (pipeline.run_units)."""
        # Each statement's own time: from the previous unit's answer to its own.
        seconds = unit.finished - self._last if unit.finished else 0.0
        self._last = unit.finished or self._last
        self._seen.add(index)
        self._ready.append((index, unit, seconds))
        if unit.finished > self._eager:  # (before it, the timer answers what is ready)
            self._flush()

    def close(self) -> None:
        """The batch is over (or broke): answer every unit that came back."""
        self._timer.cancel()
        self._flush()

    def unsent(self, replies: list[pipeline.UnitReply]) -> None:
        """Answer the units that were not sent (a parameter could not be: their error)."""
        for index, unit in enumerate(replies):
            if index not in self._seen:
                self._answer(index, unit, 0.0)

    async def looked_up(self, conn: AsyncConnection[Any]) -> None:
        """Answer the jobs whose column types had to be looked up."""
        lane = self._lane
        for job, unit in self._later:
            try:
                answer = await pipeline.answer(
                    conn, lane.node.name, lane.types, unit.replies[-1], job.max_rows,
                    job.row_format,
                )  # fmt: skip
            except Exception as exc:
                settle(job.future, error=failed(job, exc))
            else:
                settle(job.future, result=answer)

    def _flush(self) -> None:
        for ready in self._ready:
            self._answer(*ready)
        self._ready.clear()

    def _answer(self, index: int, unit: pipeline.UnitReply, seconds: float) -> None:
        position = index - self._first
        if not 0 <= position < len(self._jobs):
            return  # the batch's own clock
        job = self._jobs[position]
        try:
            if not self._lane.settle_job(self._held, job, unit, seconds):
                self._later.append((job, unit))
        except Exception as exc:  # this job's answer could not be made: its error only
            settle(job.future, error=failed(job, exc))


def failed(job: Job, exc: BaseException) -> BaseException:
    """A job whose answer could not be made: a write's outcome is then unknown."""
    failed = psycopg.InterfaceError(f"multiplexing failed: {exc!r}")
    return unknown(failed) if job.writes else failed


def not_run(timeout_ms: int) -> QueryTimeout:
    """A write whose statement timeout ran out before it could start: it did not run."""
    return QueryTimeout(
        f"the statement did not finish within {timeout_ms} ms (it waited behind others"
        " and was not run)",
        sqlstate="57014",
    )


def unknown(exc: BaseException) -> OutcomeUnknown:
    """A write was sent and its connection failed before its outcome came back."""
    return OutcomeUnknown(
        "the connection was lost after the write was sent: the write may or may not have"
        f" committed ({redactor.scrub(str(exc).strip()) or type(exc).__name__})"
    )


def copy_error(exc: BaseException) -> BaseException:
    """A fresh exception like `exc` for each waiter (one shared instance would pile up
    every waiter's traceback on it)."""
    try:
        fresh = type(exc)(*exc.args)
    except Exception:
        return exc
    if isinstance(exc, MirrorpoolError) and isinstance(fresh, MirrorpoolError):
        fresh.extra = dict(exc.extra)
    return fresh


def settle(
    future: asyncio.Future[StatementResult],
    result: StatementResult | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif result is not None:
        future.set_result(result)
