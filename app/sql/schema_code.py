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

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from app.errors import MirrorpoolError
from app.sql import catalog
from app.sql.lock_code import NO_LOCKS, Bodies, LockCode, read_lock_code
from app.sql.schema_queries import (
    CODE_DEPENDENCIES_SQL,
    CODE_TEXTS_SQL,
    COLUMNS_SQL,
    EVENT_TRIGGERS_SQL,
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
STORED_CLEAN = catalog.CLEAN_FUNCTIONS | {"nextval"}


class Verdict(IntEnum):
    """What stored code (a view's definition, a default, a check) does when it runs."""

    CLEAN = 0  # calls only what leaves nothing behind
    # Clean but for drawing from random(), whose state DISCARD ALL keeps: a statement that
    # reaches it is reseeded first and takes no lane (app/sql/traces.py of), as one that calls
    # random() by name is, but its connection is kept.
    DRAWS_RANDOM = 1
    CODE = 2  # may leave anything: counted as code of the database's own


def stored_code_verdict(text: str, own_functions: frozenset[str]) -> Verdict:
    """What code PostgreSQL printed back does when it runs."""
    try:
        tree = parse(text)
    except MirrorpoolError:
        return Verdict.CODE
    if _may_leave_anything(tree, own_functions):
        return Verdict.CODE
    # Nor may it draw from random() unseen (app/sql/traces.py of reseeds what reaches it).
    if not tree.maybe_called.isdisjoint(catalog.RANDOM_DRAWS):
        return Verdict.DRAWS_RANDOM
    return Verdict.CLEAN


def _may_leave_anything(tree: Tree, own_functions: frozenset[str]) -> bool:
    """True when stored code may leave something in the session, or read other keys'
    traces there."""
    if tree.set_configs or tree.settings or tree.temp:
        return True
    # What lists other keys' statements or counters on the connection (refused to requests
    # by name): a view or a default over it is code, which runs only once they are gone
    # (DEALLOCATE ALL, the counters flushed: app/sql/plain.py FORGET_TRACES, flushing).
    if not tree.relation_names.isdisjoint(catalog.ALWAYS_REFUSED_RELATIONS) or any(
        name in catalog.ALWAYS_REFUSED or name.startswith(catalog.PENDING_STATISTICS_PREFIX)
        for name in tree.maybe_called
    ):
        return True
    if any(not is_catalog_call(call, STORED_CLEAN) for call in tree.calls):
        return True
    # (own_call_names: attributes, unqualified calls, operators and types, as for requests)
    return not (
        own_functions.isdisjoint(tree.own_call_names)
        and catalog.UNVETTED_VOLATILE.isdisjoint(tree.attributes)
    )


@dataclass(frozen=True, slots=True)
class SchemaCode:
    """What the catalog says runs out of sight: relation names whose reading or writing runs
    code that is not clean, and the names by which a statement may call code of the
    database's own without a call of it in its tree (its functions, in attribute notation or
    overloading a catalog name; its operators; the types whose casts or checks are its code).
    `event_triggers`: an event trigger is enabled, so DDL runs code of the database's own
    (app/sql/session.py runs_unseen). `known` is False until the catalog has been read, and
    after a schema change until it is read anew."""

    read_coded: frozenset[str]
    write_coded: frozenset[str]
    own_functions: frozenset[str]
    known: bool = True
    event_triggers: bool = False
    # Counted as code what names a relation held in ACCESS EXCLUSIVE mode (not printed):
    # true only while that lock lasts, so the next reading is a full one (SchemaWatch).
    provisional: bool = False
    # Relation names whose reading or writing runs stored code that draws from random() and
    # is otherwise clean (Verdict.DRAWS_RANDOM): a view over random(), a DEFAULT random().
    read_random: frozenset[str] = frozenset()
    write_random: frozenset[str] = frozenset()
    # Code of the database's own that built-in names reach (schema_queries.ALTERED_SQL: a
    # superuser's cast between catalog types, a function or operator in pg_catalog): any
    # statement may run it, and so counts as running code unseen.
    catalog_altered: bool = False
    # The database's own code that takes value locks (app/sql/lock_code.py).
    locks: LockCode = NO_LOCKS

    def draws_random(self, tree: Tree) -> bool:
        """True when the statement reaches stored code that draws from random()."""
        return not (
            self.read_random.isdisjoint(tree.relation_names)
            and self.write_random.isdisjoint(tree.written_names)
        )

    def runs_unseen_code(self, tree: Tree) -> bool:
        """True when the statement may run code of the database's own that it does not name
        as a call (or names by a name the tree takes for a catalog function's)."""
        if not self.known:
            return bool(tree.relation_names or tree.own_call_names)
        if self.catalog_altered:
            return True
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
            event_triggers=self.event_triggers or other.event_triggers,
            read_random=self.read_random | other.read_random,
            write_random=self.write_random | other.write_random,
            catalog_altered=self.catalog_altered or other.catalog_altered,
            locks=self.locks.union(other.locks),
        )


UNKNOWN = SchemaCode(frozenset(), frozenset(), frozenset(), known=False)
NOTHING = SchemaCode(frozenset(), frozenset(), frozenset())  # a schema with no code of its own


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
    view_edges: Iterable[tuple[int, int, str]],
    names: Iterable[tuple[int, str]],
    own_functions: Iterable[str],
    write_edges: Iterable[tuple[int, int]] = (),
    event_triggers: bool = False,
    provisional: bool = False,
) -> SchemaCode:
    """The facts from the catalog's rows: the relations with code of their own, then every
    view that reads (or writes through to) one of them (`view_edges` rows 'v'), every table
    whose policy reads one ('p': its reading and writing read it), whose writing reads one
    ('w': a foreign key's check), and every relation whose writing writes one (a parent its
    partitions, a cascading foreign key its referencing table), to any depth."""
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
        for view, base, kind in edges:
            if kind != "v":
                if base in reads and not (view in writes and (kind == "w" or view in reads)):
                    writes.add(view)
                    if kind == "p":
                        reads.add(view)
                    changed = True
                continue
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
        event_triggers=event_triggers,
        provisional=provisional,
    )


@dataclass(slots=True)
class Verdicts:
    """What a reading judged, given back to the next one: each printed text's verdict (by
    the own names it was judged with), what each function's code calls (by its language,
    definition, source and the set-returning names), and whether a text locks per row (by
    the lock facts it was judged with). Unchanged code is not parsed again."""

    code: dict[tuple[str, frozenset[str]], Verdict] = field(default_factory=dict)
    bodies: Bodies = field(default_factory=dict)
    locks: dict[tuple[str, LockCode], bool] = field(default_factory=dict)


async def read(
    ask: Ask, verdicts: Verdicts | None = None, altered: bool = False
) -> tuple[SchemaCode, Verdicts]:
    """The facts, read from the catalog now, and what each printed text was judged: given
    back as `verdicts` next time, an unchanged text is not parsed again. `altered`: what the
    fingerprint said of SchemaCode.catalog_altered."""
    own = frozenset(str(r[0]) for r in await ask(OWN_FUNCTIONS_SQL, []))
    known = verdicts or Verdicts()
    judged = Verdicts()
    lock_reading = await read_lock_code(ask, known.bodies, judged.bodies)
    locking = lock_reading.code()
    coded: list[tuple[int, bool, bool]] = []
    drawing: list[tuple[int, bool, bool]] = []

    def judge(text: Any) -> Verdict:
        """What printed code does (NULL: code of the database's own), judged once per text
        and set of own names."""
        if text is None:
            return Verdict.CODE
        key = (str(text), own)
        verdict = known.code.get(key)
        if verdict is None:
            verdict = stored_code_verdict(key[0], own)
        judged.code[key] = verdict
        return verdict

    def clean(text: Any) -> bool:
        return judge(text) is Verdict.CLEAN

    provisional = False
    locked: list[tuple[int, bool, bool]] = []
    for relid, on_read, on_write, text in await ask(CODE_TEXTS_SQL, []):
        if not relid:
            provisional = text == "held"
            continue
        verdict = judge(text)
        if verdict is not Verdict.CLEAN:
            row = (int(relid), bool(on_read), bool(on_write))
            (coded if verdict is Verdict.CODE else drawing).append(row)
            if text is not None and _locks_rows(str(text), locking, known, judged):
                locked.append(row)
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
    # A relation whose row type has casts of the database's own runs them on a whole-row
    # reference (`lower(p) FROM pub p`, an assignment cast of `p`), which names no type.
    coded += [(types[t].fields_of, True, True) for t in typed if t in types and types[t].fields_of]
    type_names = {types[t].name for t in typed if t in types}
    operators = {str(r[0]) for r in await ask(OWN_OPERATORS_SQL, [])}
    edges = [(int(r[0]), int(r[1]), str(r[2])) for r in await ask(VIEW_EDGES_SQL, [])]
    names = [(int(r[0]), str(r[1])) for r in await ask(NAMES_SQL, [])]
    write_edges = [(int(r[0]), int(r[1])) for r in await ask(WRITE_EDGES_SQL, [])]
    triggers = await ask(EVENT_TRIGGERS_SQL, [])
    facts = assemble(
        coded,
        edges,
        names,
        own | operators | type_names,
        write_edges,
        event_triggers=bool(triggers and triggers[0][0]),
        provisional=provisional,
    )
    # What reaches code that draws from random(), by the same paths (a view over such a
    # view, a table whose policy reads one, a partition's parent).
    random = assemble(drawing, edges, names, (), write_edges) if drawing else NOTHING
    # And what reaches stored code that locks a value per row, by the same paths.
    by_row = assemble(locked, edges, names, (), write_edges) if locked else NOTHING
    return replace(
        facts,
        read_random=random.read_coded,
        write_random=random.write_coded,
        catalog_altered=altered,
        locks=lock_reading.code(by_row.read_coded, by_row.write_coded),
    ), judged


def _locks_rows(text: str, locking: LockCode, known: Verdicts, judged: Verdicts) -> bool:
    """Whether printed code locks a value that varies by row (app/sql/lock_code.py), judged
    once per text and lock facts."""
    key = (text, locking)
    found = known.locks.get(key)
    if found is None:
        try:
            found = locking.per_row(parse(text)) is not None
        except MirrorpoolError:
            found = False  # (judged CODE already: the text is not read)
    judged.locks[key] = found
    return found
