"""What a pooled session keeps of earlier requests, other keys' among them, that a later
statement could read: the statements mirrorpool prepared (pg_prepared_statements), the
sequence values (lastval, currval), the table counters not flushed yet (pg_stat_xact_*),
which code of the database's own could read, and the state of random(), which any key
could. None of them goes with DISCARD ALL, so they are cleared before such a statement
runs, in its own round trip (app/sql/plain.py FORGET_TRACES, flushing, reseeding).
"""

from __future__ import annotations

import secrets

from app.sql import catalog
from app.sql.schema_code import SchemaCode
from app.sql.session import calls_own_code, runs_unseen
from app.sql.tree import Tree


def may_read_traces(tree: Tree, code: SchemaCode) -> bool:
    """True when code the tree cannot follow may run (a function of the database's own,
    named or out of sight): it could read what earlier statements on the connection, other
    keys', left in the session (their sequence values through lastval() or currval(), the
    statements mirrorpool prepared for them through pg_prepared_statements, their pending
    counters), so they are discarded before it runs."""
    return calls_own_code(tree) or runs_unseen(tree, code)


def draws_random(tree: Tree, code: SchemaCode) -> bool:
    """True when the statement may draw from random() (catalog.RANDOM_DRAWS): it calls it,
    or code the tree cannot follow may. It then starts from a fresh seed of a strong random
    value (reseed_value), so what it draws tells nothing of the values before or after it."""
    return not tree.maybe_called.isdisjoint(catalog.RANDOM_DRAWS) or may_read_traces(tree, code)


def reseed_value() -> float:
    """A seed for setseed() (-1 to 1), from the operating system's strong random source."""
    return secrets.randbelow(2**53) / 2**53
