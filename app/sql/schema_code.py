"""Code of the database's own that a statement runs without naming it.

The parse tree shows what a statement calls, but not what PostgreSQL runs on its behalf: a
view's definition, a rule, a row-level security policy, a trigger, a column default, a check
constraint (a domain's too) or an index expression. Nor does it show which function a name
reaches: `t.claim` and `(expr).claim` are calls of a function `claim` when there is no such
column or field, and an unqualified `upper(x, true)` reaches a schema's own `upper` when its
signature fits better than pg_catalog's. What that code leaves in its session (a tenant
setting, a search path, a session advisory lock) would reach the next key.

So the catalog is read too, once per schema change: which relations run such code when read
or written, and which names the database's own functions have. A statement that touches
such a relation, or may call such a name, has its connection reset after it and is not a
pure read (no lane, no mirror without a writer, no retry). Until the catalog has been read,
and again after any schema change made through mirrorpool until it is read anew, every
statement that names a relation or may call a function of the database's own is treated so.
Changes made around mirrorpool are seen at the next periodic reading
(MIRRORPOOL_SCHEMA_REFRESH_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import MirrorpoolError
from app.sql import catalog
from app.sql.schema_queries import (
    CODE_DEPENDENCIES_SQL,
    CODE_TEXTS_SQL,
    COLUMNS_SQL,
    FINGERPRINT_SQL,
    NAMES_SQL,
    OWN_FUNCTIONS_SQL,
    OWN_OPERATORS_SQL,
    TYPE_CODE_SQL,
    TYPES_SQL,
    VIEW_EDGES_SQL,
    WRITE_EDGES_SQL,
)
from app.sql.tree import Tree, is_catalog_call, parse

logger = logging.getLogger(__name__)

# Runs one catalog query on some node and returns its rows (app/sql/engine.py _ask_catalog:
# on a pool connection, in a transaction with a short lock timeout).
Ask = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]

# What stored code may call and still leave nothing behind: the vetted catalog functions, and
# nextval (a serial column's default), whose only trace, currval/lastval, is read by no key
# (app/sql/session.py reads_sequence_state).
STORED_CLEAN = catalog.CLEAN_FUNCTIONS | {"nextval"}


def stored_code_is_clean(text: str, own_functions: frozenset[str]) -> bool:
    """True when code PostgreSQL printed back calls only what leaves nothing behind."""
    try:
        tree = parse(text)
    except MirrorpoolError:
        return False
    if tree.set_configs or tree.settings or tree.temp:
        return False
    if any(not is_catalog_call(call, STORED_CLEAN) for call in tree.calls):
        return False
    # (own_call_names: attributes, unqualified calls, operators and types, as for requests)
    return own_functions.isdisjoint(tree.own_call_names) and catalog.UNVETTED_VOLATILE.isdisjoint(
        tree.attributes
    )


@dataclass(frozen=True, slots=True)
class SchemaCode:
    """What the catalog says runs out of sight: relation names whose reading or writing runs
    code that is not clean, and the names by which a statement may call code of the
    database's own without a call of it in its tree (its functions, in attribute notation or
    overloading a catalog name; its operators; the types whose casts or checks are its code).
    `known` is False until the catalog has been read, and after a schema change until it is
    read anew."""

    read_coded: frozenset[str]
    write_coded: frozenset[str]
    own_functions: frozenset[str]
    known: bool = True

    def runs_unseen_code(self, tree: Tree) -> bool:
        """True when the statement may run code of the database's own that it does not name
        as a call (or names by a name the tree takes for a catalog function's)."""
        if not self.known:
            return bool(tree.relation_names or tree.own_call_names)
        # `t.f` and `(expr).f` are calls of f when there is no such column or field, and an
        # unqualified name reaches the schema's own overload when its signature fits better.
        return not (
            self.read_coded.isdisjoint(tree.relation_names)
            and self.write_coded.isdisjoint(tree.written_names)
            and self.own_functions.isdisjoint(tree.own_call_names)
        )

    def union(self, other: SchemaCode) -> SchemaCode:
        """Facts that count the code either holds (what ran while the schema changed from
        one to the other)."""
        return SchemaCode(
            self.read_coded | other.read_coded,
            self.write_coded | other.write_coded,
            self.own_functions | other.own_functions,
        )


UNKNOWN = SchemaCode(frozenset(), frozenset(), frozenset(), known=False)
# A schema with no code of its own (what a test of the lanes alone assumes).
NOTHING = SchemaCode(frozenset(), frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class Type:
    """A type and what it is made of (0: nothing)."""

    name: str
    base: int
    element: int
    fields_of: int


def coded_types(
    types: dict[int, Type], checked: set[int], columns: dict[int, set[int]]
) -> set[int]:
    """The types whose values run code when made: `checked` (domains with checks that are
    not clean, types with casts of the database's own), and, to any depth, domains over
    them, arrays of them and composites with a field of them."""
    coded = set(checked)
    changed = True
    while changed:
        changed = False
        for oid, t in types.items():
            if oid in coded:
                continue
            parts = {t.base, t.element} | columns.get(t.fields_of, set())
            if parts & coded:
                coded.add(oid)
                changed = True
    return coded


def assemble(
    coded: Iterable[tuple[int, bool, bool]],
    view_edges: Iterable[tuple[int, int]],
    names: Iterable[tuple[int, str]],
    own_functions: Iterable[str],
    write_edges: Iterable[tuple[int, int]] = (),
) -> SchemaCode:
    """The facts from the catalog's rows: the relations with code of their own, then every
    view that reads (or writes through to) one of them, and every relation whose writing
    writes one (a parent its partitions, a cascading foreign key its referencing table), to
    any depth."""
    reads: set[int] = set()
    writes: set[int] = set()
    for relid, on_read, on_write in coded:
        if on_read:
            reads.add(relid)
        if on_write:
            writes.add(relid)
    edges = list(view_edges)
    also_written = list(write_edges)
    changed = True
    while changed:
        changed = False
        for view, base in edges:
            if base in reads and view not in reads:
                reads.add(view)
                changed = True
            if base in writes and view not in writes:
                writes.add(view)
                changed = True
        for written, also in also_written:
            if also in writes and written not in writes:
                writes.add(written)
                changed = True
    by_oid = dict(names)
    return SchemaCode(
        read_coded=frozenset(by_oid[r] for r in reads if r in by_oid),
        write_coded=frozenset(by_oid[w] for w in writes if w in by_oid),
        own_functions=frozenset(own_functions),
    )


async def read(
    ask: Ask, verdicts: dict[tuple[str, frozenset[str]], bool] | None = None
) -> tuple[SchemaCode, dict[tuple[str, frozenset[str]], bool]]:
    """The facts, read from the catalog now, and what each printed text was judged: given
    back as `verdicts` next time, an unchanged text is not parsed again."""
    own = frozenset(str(r[0]) for r in await ask(OWN_FUNCTIONS_SQL, []))
    known = verdicts or {}
    judged: dict[tuple[str, frozenset[str]], bool] = {}
    coded: list[tuple[int, bool, bool]] = []

    def clean(text: Any) -> bool:
        """Whether printed code is clean (NULL: code of the database's own, never clean),
        judged once per text and set of own names."""
        if text is None:
            return False
        key = (str(text), own)
        verdict = known.get(key)
        if verdict is None:
            verdict = stored_code_is_clean(key[0], own)
        judged[key] = verdict
        return verdict

    for relid, on_read, on_write, text in await ask(CODE_TEXTS_SQL, []):
        if not clean(text):
            coded.append((int(relid), bool(on_read), bool(on_write)))
    for relid, on_read, on_write in await ask(CODE_DEPENDENCIES_SQL, []):
        coded.append((int(relid), bool(on_read), bool(on_write)))
    # Types whose values run code: checked domains, types with casts of the database's own
    # (also when read), domains with defaults (only when written); then the columns of any
    # type made of them.
    checked: set[int] = set()
    defaulted: set[int] = set()
    for typid, text, on_read in await ask(TYPE_CODE_SQL, []):
        if not clean(text):
            (checked if on_read else defaulted).add(int(typid))
    types = {
        int(r[0]): Type(str(r[1]), int(r[2]), int(r[3]), int(r[4]))
        for r in await ask(TYPES_SQL, [])
    }
    columns: dict[int, set[int]] = {}
    for relid, typid in await ask(COLUMNS_SQL, []):
        columns.setdefault(int(relid), set()).add(int(typid))
    typed = coded_types(types, checked, columns)
    # (a composite or an array takes no default from a domain it holds: counting them is
    # more than needed, never less)
    typed_written = coded_types(types, checked | defaulted, columns)
    # A column of such a type runs its code when written, and its casts when read.
    coded += [
        (relid, bool(used & typed), True) for relid, used in columns.items() if used & typed_written
    ]
    type_names = {types[t].name for t in typed if t in types}
    operators = {str(r[0]) for r in await ask(OWN_OPERATORS_SQL, [])}
    edges = await ask(VIEW_EDGES_SQL, [])
    names = await ask(NAMES_SQL, [])
    write_edges = await ask(WRITE_EDGES_SQL, [])
    facts = assemble(
        coded,
        ((int(r[0]), int(r[1])) for r in edges),
        ((int(r[0]), str(r[1])) for r in names),
        own | operators | type_names,
        ((int(r[0]), int(r[1])) for r in write_edges),
    )
    return facts, judged


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
        self._verdicts: dict[tuple[str, frozenset[str]], bool] = {}
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

    def changed(self) -> None:
        """A statement that may change the schema ran: the facts are unknown until read."""
        self._generation += 1
        # (the facts known are kept to be restored if the catalog turns out unchanged: a
        # refused DDL, a function that changed nothing; the unknown then lasts one fingerprint)
        self._forget()
        self._wake.set()

    async def read_now(self) -> bool:
        generation = self._generation
        began = time.time()  # what is read reflects the catalog as of (at least) now
        started = time.monotonic()
        fingerprint: str | None = None
        try:
            rows = await self._ask(FINGERPRINT_SQL, [])
            fingerprint = str(rows[0][0])
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
            facts, self._verdicts = await read(self._ask, self._verdicts)
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
            self._fingerprint = fingerprint
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
                await asyncio.wait_for(done.wait(), remaining)
            except TimeoutError:
                return None
        return self._latest[1]

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
                await asyncio.wait_for(
                    self._wake.wait(), self.refresh_s if fresh else min(self.refresh_s, 1.0)
                )
