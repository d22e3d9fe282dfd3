"""Long statements are read (scanned, parsed, checked) off the event loop.

Reading a statement is pure CPU: libpg_query's parse, then its JSON loaded and walked in
Python. For a statement of MIRRORPOOL_MAX_SQL_LENGTH (100,000 characters) that is 0.4 to
0.7 s, and on the event loop no other key's request is served meanwhile. Statements longer
than OFF_LOOP_CHARS are therefore prepared in a small pool of threads of their own: the loop
goes on between the GIL's switches (every 5 ms), so a key sending long statements slows its
own requests, not everyone's. Each key has one reader at a time: its other long statements
wait their turn, and another key's find the other thread free. Short statements, the usual
case and mostly cached, are read where they are: the hop to a thread would cost more than
their parse.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from weakref import WeakKeyDictionary

from app.sql.options import StatementRules
from app.sql.placeholders import BoundSQL
from app.sql.statement import prepare

# Longer texts are read off the loop (a dense statement of this length parses in ~3 ms).
OFF_LOOP_CHARS = 4096
# Threads that read long statements: at most this many at once, whoever sends them.
READERS = 2

_readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="mirrorpool-sql-reader")
# One reader at a time per key (keys are the configured ones, and "" without auth), on each
# event loop (a semaphore belongs to the loop it was first used on).
_turns: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    WeakKeyDictionary()
)


async def prepared(
    sql: str,
    params: list[Any] | dict[str, Any] | None,
    rules: StatementRules,
    read_only: bool = False,
    key: str = "",
) -> BoundSQL:
    """statement.prepare(), off the event loop, one at a time for `key`, for a long text."""
    if len(sql) <= OFF_LOOP_CHARS:
        return prepare(sql, params, rules, read_only)
    loop = asyncio.get_running_loop()
    turns = _turns.setdefault(loop, {})
    turn = turns.get(key)
    if turn is None:
        turn = turns[key] = asyncio.Semaphore(1)
    async with turn:
        return await loop.run_in_executor(
            _readers, functools.partial(prepare, sql, params, rules, read_only)
        )
