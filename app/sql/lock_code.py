"""The database's own code that takes value locks, and the lock rule over what reaches it.

A statement may take at most a few advisory locks (or lo_unlink()s), each on a value that is
the same on every row (app/sql/refusals.py): each value locked takes an entry of the
server's shared lock table until the transaction ends, and one statement locking every
row's value would fill it for every session, other keys' included (passes 41 and 42). The
same locks taken by the schema's own code are out of the request's tree: the usual "claim a
job" function `claim(job)` that calls pg_advisory_xact_lock(job), called as
`claim(id) FROM jobs`, or a view `... WHERE pg_try_advisory_xact_lock(id)`.

So the catalog's code is read for them too (app/sql/schema_code.py read):

- each function of the database's own in LANGUAGE sql or plpgsql is parsed, by PostgreSQL's
  parser and PL/pgSQL's (each of its embedded queries parsed as SQL), for what it calls and
  whether a call may run more than once per call of the function: in a loop, over a query's
  rows, on a value that is not the function's arguments' (`function_sites`);
- a function that calls a lock function, or another such function, is a *locker*: a call of
  it counts under the statement's rule as a lock call does (at most MAX_VALUE_LOCKS, on
  values the same on every row), so `claim($1)` runs and `claim(id) FROM jobs` is refused;
- one that may lock many values per call (a lock in a loop, over rows, on a value of its own
  making, or a recursive locker) is refused to every statement;
- a relation whose stored code (a view's definition, a policy, a default, a check, an index
  expression) locks a value that varies by row, or calls a locker so, is refused to read (or
  write, as that code runs).

A function that locks only constants takes the same few locks however often it runs, and is
no locker. Not read: dynamic SQL built at run time (EXECUTE of a computed text), code in
other languages (C functions come from extensions a superuser installed), operators and
casts whose function is a locker (matched by name, an own `=` would refuse every statement
that compares), a domain's check that calls one, and triggers: a row trigger's function
that locks its row's value runs once per row written (the README says so).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pglast import parser

from app.errors import InvalidSQL
from app.sql.catalog import VALUE_LOCKS
from app.sql.lock_bodies import CONSTANT, RELATION, Site, function_sites
from app.sql.refusals import MAX_VALUE_LOCKS
from app.sql.schema_queries import AGGREGATE_FUNCTIONS_SQL, FUNCTION_CODE_SQL, SET_RETURNING_SQL
from app.sql.tree import Tree
from app.sql.tree_nodes import steady


def defaults_vary(text: str | None) -> bool:
    """Whether a function's argument defaults (pg_get_expr of proargdefaults: a list) may
    differ from one call to the next: anything but constants (`nextval('s')`, `random()`)."""
    if not text:
        return False
    try:
        parsed = json.loads(parser.parse_sql_json(f"SELECT {text}"))
        targets = parsed["stmts"][0]["stmt"]["SelectStmt"]["targetList"]
    except (parser.ParseError, ValueError, KeyError, IndexError):
        return True
    return not all(steady(t["ResTarget"].get("val") or {}, CONSTANT) for t in targets)


def lockers(
    bodies: Mapping[str, Iterable[Site]],
    varying: Iterable[str] = (),
    reading: frozenset[str] = frozenset(),
) -> tuple[frozenset[str], frozenset[str]]:
    """From each function's sites (overloads under one name): the lockers, which lock a
    value they are given or compute, and those of them that may lock many values in one
    call (a lock site that repeats, a call of such a locker, a locker that reaches itself
    again, or one whose argument defaults differ from call to call, `varying`: each row's
    call that leaves the argument out then locks a value of its own; or one whose code names
    a relation in `reading`, whose stored code locks per row). A function that locks only
    constants takes the same few locks however often it runs: it is neither."""
    defaulted = set(varying)
    endless_relations = {RELATION + name for name in reading}
    sites = {name: tuple(found) for name, found in bodies.items()}
    found: set[str] = set()
    many: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, calls in sites.items():
            locks = [(again, fixed) for c, again, fixed in calls if c in VALUE_LOCKS or c in found]
            endless = any(c in many or c in endless_relations for c, _, _ in calls) or any(
                (again or name in defaulted) for again, fixed in locks if not fixed
            )
            if name not in found and (endless or not all(fixed for _, fixed in locks)):
                found.add(name)
                changed = True
            recursive = name in found and name in _reached(name, sites, found)
            if name in found and name not in many and (endless or recursive):
                many.add(name)
                changed = True
    return frozenset(found), frozenset(many)


def _reached(start: str, sites: Mapping[str, tuple[Site, ...]], found: set[str]) -> set[str]:
    """The lockers a locker's calls reach, to any depth."""
    reached: set[str] = set()
    stack = [start]
    while stack:
        for callee, _, _ in sites.get(stack.pop(), ()):
            if callee in found and callee not in reached:
                reached.add(callee)
                stack.append(callee)
    return reached


@dataclass(frozen=True, slots=True)
class LockCode:
    """What the catalog says of the database's own code that takes value locks: `found`,
    the lockers' names; `many`, those that may lock many values in one call; and the
    relations whose reading (`read`) or writing (`written`) runs stored code that locks a
    value varying by row."""

    found: frozenset[str] = frozenset()
    many: frozenset[str] = frozenset()
    read: frozenset[str] = frozenset()
    written: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.found or self.read or self.written)

    def union(self, other: LockCode) -> LockCode:
        return LockCode(
            self.found | other.found,
            self.many | other.many,
            self.read | other.read,
            self.written | other.written,
        )

    def per_row(self, tree: Tree) -> str | None:
        """Why a statement, or stored code, may lock more values than the rule allows
        through the database's own lockers, or None."""
        if tree.value_locks_vary:
            return "a lock is taken on a value that may vary row by row"
        calls = [(name, n, varies) for name, n, varies in tree.call_sites if name in self.found]
        endless = sorted(name for name, _, _ in calls if name in self.many)
        if endless:
            return f"{endless[0]}() of the database's own may lock any number of values in a call"
        varying = sorted(name for name, _, varies in calls if varies)
        varying += sorted(tree.attributes & self.found)  # `t.claim`: claim(t) on every row
        if varying:
            return (
                f"{varying[0]}() of the database's own takes a lock on the value it is "
                "given, here one that may vary row by row"
            )
        count = tree.value_locks + sum(n for _, n, _ in calls)
        if count > MAX_VALUE_LOCKS:
            return f"the database's own functions here lock {count} values"
        return None

    def refusal(self, tree: Tree) -> str | None:
        """The answer to a key's statement that would lock values past the rule through the
        database's own code, or None."""
        if not self:
            return None
        why = self.per_row(tree)
        if why is None:
            hit = sorted((self.read & tree.relation_names) | (self.written & tree.written_names))
            if hit:
                why = f"{hit[0]} runs code of the database's own that locks a value per row"
        if why is None:
            return None
        return (
            f"{why}: advisory locks and lo_unlink() are taken at most {MAX_VALUE_LOCKS} to a "
            "statement, each on a value that is the same on every row, and so are calls of "
            "the database's own functions that take them; each value locked takes an entry "
            "of the server's shared lock table, which locking every row's would fill for "
            "every session, other keys' included; lock rows with SELECT ... FOR UPDATE SKIP "
            "LOCKED instead"
        )


NO_LOCKS = LockCode()

# A function's code by what it is read by (language, definition, source, set-returning
# names): what it calls (app/sql/schema_code.py Verdicts.bodies).
Bodies = dict[tuple[str, str, str, frozenset[str]], tuple[Site, ...]]
Ask = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True, slots=True)
class LockReading:
    """What the catalog's functions call (`bodies`, overloads and an aggregate's functions
    under one name), and those whose argument defaults differ from call to call."""

    bodies: Mapping[str, Sequence[Site]]
    defaulted: frozenset[str]

    def code(
        self, read: frozenset[str] = frozenset(), written: frozenset[str] = frozenset()
    ) -> LockCode:
        """The lock facts, given the relations whose stored code locks per row when read
        or written: a function whose code names one locks many values too."""
        return LockCode(*lockers(self.bodies, self.defaulted, read | written), read, written)


async def read_lock_code(ask: Ask, known: Bodies, judged: Bodies) -> LockReading:
    """The database's own functions that take value locks, read from the catalog now
    (`ask`: app/sql/schema_code.py's); each function's code is parsed once per text (`known`,
    from the last reading; what this one read goes into `judged`). An aggregate runs its
    functions once per row: it calls them many times."""
    set_returning = frozenset(str(r[0]) for r in await ask(SET_RETURNING_SQL, []))
    bodies: dict[str, list[Site]] = {}
    defaulted: set[str] = set()
    for name, language, definition, source, defaults in await ask(FUNCTION_CODE_SQL, []):
        key = (str(language), str(definition or ""), str(source or ""), set_returning)
        sites = known.get(key)
        if sites is None:
            sites = function_sites(*key)
        judged[key] = sites
        bodies.setdefault(str(name), []).extend(sites)
        if defaults_vary(defaults):
            defaulted.add(str(name))
    for aggregate, runs in await ask(AGGREGATE_FUNCTIONS_SQL, []):
        bodies.setdefault(str(aggregate), []).append((str(runs), True, False))
    return LockReading(bodies, frozenset(defaulted))


# Relations, sequences and indexes the statements of one transaction may make together: a
# transaction holds each one's entries until it ends, and a key holds up to its share of the
# pool in transactions (5 connections by default). Without it, 100 statements at
# refusals.MAX_OBJECTS_MADE held 1,390 entries of 23,235, and a temporary partitioned
# table's partitions and its indexes (each CREATE INDEX makes one per partition) grew with
# the square of them.
MAX_MADE_IN_TRANSACTION = 16
# What a rewrite counts for there: a new heap for each partition and each index anew, as
# many as the table has (pass 45: 83 ALTER COLUMN TYPE of a temporary table of 8 partitions
# and 7 indexes, within the 16 above, held 7,894 entries, about 94 each). At 8, one rewrite
# fits a transaction with what made its table (7 more: 3 partitions and 3 indexes, 12 relations
# rewritten), and two fit only a table made outside it.
REWRITE_COUNTS = 8


def made_refusal(trees: Sequence[Tree]) -> tuple[int, str] | None:
    """The first statement (its index) past what a transaction's statements may make
    together, and why; None when they keep to it."""
    made = 0
    for index, tree in enumerate(trees):
        made += tree.objects_made + tree.makes_relation + REWRITE_COUNTS * tree.rewrites
        if made > MAX_MADE_IN_TRANSACTION:
            return index, (
                f"the transaction's statements up to this one make {made} relations, "
                f"sequences and indexes (a table rewrite counts {REWRITE_COUNTS}); at most "
                f"{MAX_MADE_IN_TRANSACTION} are made in one transaction: each takes entries of "
                "the server's shared lock table until the transaction ends, which enough of "
                "them would fill for every session, other keys' included; run larger DDL as a "
                "migration"
            )
    return None


def check(locks: LockCode, trees: Sequence[Tree]) -> None:
    """400 for the first of a request's statements that would lock values past the rule
    through the database's own code (LockCode.refusal), or make more than a transaction
    may (made_refusal), naming its index when there are several."""
    refused = made_refusal(trees)
    if refused is None and locks:
        refused = next(
            ((i, why) for i, tree in enumerate(trees) if (why := locks.refusal(tree))), None
        )
    if refused is not None:
        index, why = refused
        raise InvalidSQL(why, **({"statement_index": index} if len(trees) > 1 else {}))
