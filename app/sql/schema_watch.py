"""The schema watch: the catalog's facts (app/sql/schema_code.py) kept current. Read at
start-up, checked every MIRRORPOOL_SCHEMA_REFRESH_S by a fingerprint, and at once after a
schema change made through mirrorpool; until then UNKNOWN, and a statement that may reach
the database's own code meanwhile is judged once a reading begun after it is in
(app/sql/checkout.py later()).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from app.sql import pipeline
from app.sql.lock_code import NO_LOCKS, LockCode
from app.sql.pipeline import Command, Keep
from app.sql.schema_code import UNKNOWN, Ask, SchemaCode, Verdicts, read
from app.sql.schema_queries import FINGERPRINT_SQL
from app.sql.session import changes_schema
from app.sql.tree import Tree

logger = logging.getLogger("app.sql.schema_code")

# A reading's own limits, local to its transaction: printing a default or a check back takes
# a lock on its table, so a key holding one (past what the reading skips, see
# schema_queries.CODE_TEXTS_SQL) delays it half a second, then it is tried again.
CATALOG_LIMITS = (
    "SELECT pg_catalog.set_config('lock_timeout', '500ms', true),"
    " pg_catalog.set_config('statement_timeout', '5s', true),"
    # and no name of the reading's reaches a temporary type or relation of the session's
    # (pg_temp is searched first unless named, and then in its place: last)
    " pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)"
)


# Rows a catalog query may return (a column per row of every relation: many, not unbounded).
_CATALOG_ROWS = 10_000_000


def ask_on(conn: AsyncConnection[Any]) -> Ask:
    """Catalog queries on `conn`, each with the reading's limits local to its own implicit
    transaction: one round trip (app/sql/pipeline), a fingerprint about one query's time."""

    async def ask(query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        unit = [
            Command(CATALOG_LIMITS, prepare=False),
            Command(query, params, prepare=False, keep=Keep(_CATALOG_ROWS)),
        ]
        (answered,) = await pipeline.run_units(conn, [unit])
        for reply in answered.replies:
            if reply.error is not None:
                raise reply.error
        return list(answered.replies[-1].rows)

    return ask


# What stored code may call and still leave nothing behind: the vetted catalog functions, and
# nextval (a serial column's default), whose only trace, currval/lastval, is read by no key
# (app/sql/session.py reads_sequence_state).


class SchemaWatch:
    """The current facts: read at start-up, every `refresh_s`, and at once after a schema
    change made through mirrorpool (until then, UNKNOWN: every doubtful statement is reset).
    """

    def __init__(self, ask: Ask, refresh_s: float) -> None:
        self._ask = ask
        self.refresh_s = refresh_s
        self.current: SchemaCode = UNKNOWN
        # When the catalog was last found current (time.time()).
        self.read_at_wall: float | None = None
        self._fingerprint: str | None = None
        # What the last fingerprint said of SchemaCode.catalog_altered: the connections the
        # catalog's queries ran on are then closed after them (app/sql/engine.py).
        self.altered = False
        self._verdicts = Verdicts()
        self._generation = 0
        self._wake = asyncio.Event()
        # Set once the catalog has been read (or found unreadable) for the first time.
        self.first_read = asyncio.Event()
        self._failing = False
        self._before: SchemaCode | None = None
        # The facts last known (what the lanes go by while they are being read again), and
        # the newest reading that succeeded: when it began (time.monotonic()) and what it
        # found, for statements judged once the catalog is read (facts_since).
        self.last_known: SchemaCode | None = None
        self._latest: tuple[float, SchemaCode] | None = None
        self._read_done = asyncio.Event()

    @classmethod
    def fixed(cls, facts: SchemaCode) -> SchemaWatch:
        """A watch that never reads the catalog and always says `facts`."""

        async def nothing(query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            raise RuntimeError("this watch reads no catalog")

        watch = cls(nothing, 3600)
        watch.current = watch.last_known = facts
        return watch

    @property
    def locks(self) -> LockCode:
        """The database's own code that takes value locks, as last known: while the facts
        are read anew, the last reading's (a locker made meanwhile is seen once read)."""
        facts = self.current if self.current.known else self.last_known
        return facts.locks if facts is not None else NO_LOCKS

    def changed_by(self, tree: Tree) -> bool:
        """Whether the facts are unknown while the statement runs (session.changes_schema):
        not for one that makes only a temporary table or sequence while the facts are known,
        no event trigger may run code on it and it names no type or relation with code of
        the database's own (a type's input function runs on a default's literal, and LIKE
        reads a relation). The facts count nothing in a temporary schema, and the connection
        is closed after it (session.effect), so they would read the same after it; a key
        making temporary tables in a loop would otherwise have every other key's statements
        judged once the catalog is read again (pass 15)."""
        facts = self.current
        if (
            tree.temp_only
            and facts.known
            and not facts.event_triggers
            and not facts.runs_unseen_code(tree)
        ):
            return False
        return changes_schema(tree)

    def changed(self) -> None:
        """A statement that may change the schema ran: the facts are unknown until read."""
        self._generation += 1
        # (the facts known are kept to be restored if the catalog turns out unchanged: a
        # refused DDL, a function that changed nothing; the unknown then lasts one fingerprint)
        self._forget()
        self._wake.set()

    async def read_now(self, ask: Ask | None = None) -> bool:
        """Read the catalog (on `ask`, else the watch's own way): True when the facts are
        current."""
        ask = ask or self._ask
        generation = self._generation
        began = time.time()  # what is read reflects the catalog as of (at least) now
        started = time.monotonic()
        fingerprint: str | None = None
        try:
            rows = await ask(FINGERPRINT_SQL, [])
            # (before any other query of the reading: they may run what it reports; and a
            # change of it is a change, though no row it counts changed: a catalog function
            # replaced in place keeps its OID)
            self.altered = bool(rows[0][1])
            fingerprint = f"{rows[0][0]}|{self.altered}"
            unchanged = fingerprint == self._fingerprint
            if unchanged and (self.current.known or self._before is not None):
                same = self.current if self.current.known else self._before
                assert same is not None
                self._publish(started, same)
                if generation != self._generation:
                    return False  # a change came in while reading: read again
                if not self.current.known:
                    self._before = None
                    self._know(same)
                self.read_at_wall = began
                return True
            facts, self._verdicts = await read(ask, self._verdicts, self.altered)
        except Exception as exc:
            if not self._failing:  # once, not every second while it lasts
                logger.warning("could not read the schema's own code from the catalog: %s", exc)
            self._failing = True
            if fingerprint is not None and fingerprint != self._fingerprint:
                # The catalog changed and could not be read (a table lock held past the
                # reading's lock timeout): what was known no longer holds.
                self._forget()
            return False
        self._failing = False
        self._publish(started, facts)
        if generation == self._generation:  # no change came in while reading
            self._before = None
            self._know(facts)
            # (facts that counted a locked relation's definitions as code hold until the lock
            # goes, which changes no catalog row: the next check reads in full again)
            self._fingerprint = None if facts.provisional else fingerprint
            self.read_at_wall = began
            return True
        return False

    def _know(self, facts: SchemaCode) -> None:
        self.current = self.last_known = facts

    def _forget(self) -> None:
        if self.current.known:
            self._before = self.current
        self.current = UNKNOWN

    def _publish(self, started: float, facts: SchemaCode) -> None:
        """A reading that began at `started` found `facts`: they hold for every statement
        that had ended by then."""
        self._latest = (started, facts)
        done, self._read_done = self._read_done, asyncio.Event()
        done.set()

    async def facts_since(self, since: float, timeout: float) -> SchemaCode | None:
        """The facts of a reading begun at `since` (time.monotonic()) or later, asking for
        one; None when none succeeds within `timeout` seconds. A statement that ended by
        `since` saw no schema such a reading misses, whatever changes come after it."""
        deadline = time.monotonic() + timeout
        while self._latest is None or self._latest[0] < since:
            self._wake.set()
            done = self._read_done
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    await done.wait()
            except TimeoutError:
                return None
        return self._latest[1]

    async def read_on(self, ask: Ask, timeout: float) -> SchemaCode | None:
        """The facts of a reading on a connection the caller holds, begun now (after its
        statements ended), or None when it fails or takes over `timeout` seconds. For a
        caller whose connection the watch's own reading might be waiting for."""
        since = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self.read_now(ask)
        except TimeoutError:
            return None
        latest = self._latest
        return latest[1] if latest is not None and latest[0] >= since else None

    @property
    def settled(self) -> SchemaCode | None:
        """The facts now, or while they are being read again the last ones known."""
        return self.current if self.current.known else self.last_known

    async def run(self) -> None:
        """Keep the facts fresh (a supervised task for the service's lifetime)."""
        while True:
            self._wake.clear()
            fresh = await self.read_now()
            self.first_read.set()
            # (a change while reading has set the event: read again at once)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s if fresh else min(self.refresh_s, 1.0)):
                    await self._wake.wait()
