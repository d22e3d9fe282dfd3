"""What a pooled session keeps of earlier requests, other keys' among them, that a later
statement could read: the statements mirrorpool prepared (pg_prepared_statements), the
sequence values (lastval, currval), the table counters not flushed yet (pg_stat_xact_*),
which code of the database's own could read, and the state of random(), which any key
could. None of them goes with DISCARD ALL, so they are cleared before such a statement
runs, in its own round trip (app/sql/plain.py FORGET_TRACES, flushing, reseeding).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from app.sql import catalog
from app.sql.schema_code import SchemaCode
from app.sql.session import calls_own_code, runs_unseen
from app.sql.tree import Tree

# The table and function counters of earlier transactions, which the backend keeps until it
# flushes them (at most once a second, PostgreSQL 15 on; no DISCARD clears them) and
# pg_stat_xact_* shows: forced out at the end of a unit of their own (the flush runs when the
# backend goes idle, before it says it is ready).
FLUSH_STATISTICS_SQL = "SELECT pg_catalog.pg_stat_force_next_flush()"
RESEED_SQL = "SELECT pg_catalog.setseed($1)"


@dataclass(frozen=True, slots=True)
class Traces:
    """What goes before a statement: with `forget` (may_read_traces), the session's traces
    of earlier statements are discarded and its counters flushed, and the statement is not
    prepared by name; with `reseed`, random() starts from a fresh seed."""

    forget: bool
    reseed: bool


def of(tree: Tree, code: SchemaCode) -> Traces:
    """What goes before the statement. `reseed` when it may draw from random()
    (catalog.RANDOM_DRAWS): it calls it, it reaches stored code that does (a view over
    random(), a DEFAULT random(): SchemaCode.draws_random), or code the tree cannot follow
    may. It then starts from a fresh seed of a strong random value (reseed_value), so what
    it draws tells nothing of the values before or after it."""
    forget = may_read_traces(tree, code)
    return Traces(
        forget,
        forget or not tree.maybe_called.isdisjoint(catalog.RANDOM_DRAWS) or code.draws_random(tree),
    )


def may_read_traces(tree: Tree, code: SchemaCode) -> bool:
    """True when code the tree cannot follow may run (a function of the database's own,
    named or out of sight): it could read what earlier statements on the connection, other
    keys', left in the session (their sequence values through lastval() or currval(), the
    statements mirrorpool prepared for them through pg_prepared_statements, their pending
    counters), so they are discarded before it runs."""
    return calls_own_code(tree) or runs_unseen(tree, code)


def reseed_value() -> float:
    """A seed for setseed() (-1 to 1), from the operating system's strong random source."""
    return secrets.randbelow(2**53) / 2**53


def setseed_call(seed: float) -> str:
    """setseed() of `seed` as SQL text, for an opening or a cleanup sent as text."""
    return f"pg_catalog.setseed({float(seed)!r}::pg_catalog.float8)"
