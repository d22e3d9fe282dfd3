"""Which statement texts are quick enough to take a key's lanes (app/sql/multiplex.py): how
long each pure read took last, remembered per key and text, so one key's slow runs of a text
take it out of that key's lanes only.
"""

from __future__ import annotations

from app.sql import session
from app.sql.checkout import Checkout
from app.sql.execution import mark
from app.sql.schema_watch import SchemaWatch
from app.sql.text_cache import CACHEABLE_LENGTH
from app.sql.tree import Tree

# A statement joins a lane once it has run in under this long; one slow run takes it out
# (MIRRORPOOL_MULTIPLEX_QUICK_MS).
QUICK_S = 0.005
# Statement texts whose speed is remembered at most, per key.
MAX_KNOWN = 4096


class Known:
    """How long reads took last, by key and SQL text: which ones are quick enough to share
    (one key's slow runs of a text take it out of that key's lanes only)."""

    def __init__(self, schema: SchemaWatch, quick_s: float = QUICK_S, writes: bool = True) -> None:
        self._seconds: dict[str, dict[str, float]] = {}
        self._schema = schema
        self._quick_s = quick_s
        # Plain writes may join too (MIRRORPOOL_MULTIPLEX_WRITES).
        self._writes = writes

    def quick(self, key: str, tree: Tree, sql: str) -> bool:
        """True when the statement is a plain read that ran quickly last time (and, as the
        catalog says now, runs no code of the database's own out of sight)."""
        seconds = self._seconds.get(key, {}).get(sql)
        # While the catalog is being read again the facts last known decide: the lane's
        # connection is judged anew once it is read (execution.mark), and a statement of a
        # key's lane shares its connection with that key's statements only.
        facts = self._schema.settled
        return (
            seconds is not None
            and seconds < self._quick_s
            and facts is not None
            and not session.runs_unseen(tree, facts)
        )

    def mark(self, held: Checkout, tree: Tree) -> None:
        """Note what a statement run in a lane may leave in its session (execution.mark)."""
        mark(held, tree, self._schema)

    def observe(self, key: str, tree: Tree, sql: str, seconds: float) -> None:
        """Remember a run (failed ones too): a slow one counts at once, quick ones bring the
        figure down. Only pure reads (session.pure_read) are ever remembered, at most
        MAX_KNOWN texts per key (a key that sends too many forgets its own, no one else's),
        none longer than the parse cache keeps (CACHEABLE_LENGTH): what is held per text stays
        as bounded as the parse cache bounds it."""
        known = self._seconds.setdefault(key, {})
        last = known.get(sql)
        if last is None:
            facts = self._schema.settled
            if (
                len(sql) > CACHEABLE_LENGTH
                or facts is None
                or not session.may_share(tree, facts, self._writes)
            ):
                return
            if len(known) >= MAX_KNOWN:
                known.clear()
        known[sql] = seconds if last is None or seconds > last else last * 0.5 + seconds * 0.5
