"""What every way of running a request shares: its limits, its outcome, and what each
strategy reads (the engine's options, the nodes' type names)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.sql import session, traces
from app.sql.checkout import Checkout
from app.sql.columns import TypeNames
from app.sql.options import EngineOptions
from app.sql.pipeline import Allowance, Keep
from app.sql.results import RowFormat, StatementResult
from app.sql.schema_watch import SchemaWatch
from app.sql.tree import Tree
from app.sql.types import SESSION_SETTINGS

# At most what a text answer (POST /sql, Neon's form) wraps each result's rows and fields in:
# its command, row count and row mode.
RESULT_BYTES = 128


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a request may run and how many rows it may return."""

    timeout_ms: int
    max_rows: int
    read_only: bool = False
    row_format: RowFormat = "array"
    role: str | None = None
    # The key that sent the request: its quick reads share lanes with its own only.
    key: str = ""
    # Values as PostgreSQL's own text, under its default output styles (app/sql/text_output.py).
    text_output: bool = False


@dataclass(slots=True)
class Outcome:
    """Results of a request, with the node that served it and how long it took."""

    results: list[StatementResult]
    node: str
    duration_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # Served by a node that was not the writer (a mirror, or any node while none takes writes).
    from_mirror: bool = False


@dataclass(frozen=True, slots=True)
class Context:
    """What the strategies read: the engine's options, the type names of every node, and
    what the catalog says of code that runs out of the tree's sight."""

    options: EngineOptions
    types: TypeNames
    schema: SchemaWatch

    def mark(self, held: Checkout, tree: Tree, traced: traces.Traces | None = None) -> None:
        """Note on the checkout what the statement may leave in its session (app/sql/session.py),
        code of the database's own that it runs unseen included: judged when the connection
        goes back if the catalog is being read again meanwhile. `traced`: its traces(), if
        already known."""
        mark(held, tree, self.schema, traced)

    def traces(self, tree: Tree) -> traces.Traces:
        """What goes before the statement (traces.of): the session's traces of earlier
        statements discarded, which rules out preparing it by name; random() seeded anew."""
        return traces.of(tree, self.schema.current)

    def pure_read(self, tree: Tree) -> bool:
        return session.pure_read_with(tree, self.schema.current)

    @property
    def local_settings(self) -> dict[str, str] | None:
        """What a transaction must SET LOCAL because its session does not carry it (behind
        a transaction pooler), or None."""
        return None if self.options.own_sessions else SESSION_SETTINGS

    def keep(self, limits: Limits, stop: bool, allowance: Allowance | None = None) -> Keep:
        """What to keep of a statement's rows: max_rows + 1 (the one more says it was cut),
        within the request's bytes (MIRRORPOOL_MAX_RESPONSE_BYTES)."""
        if allowance is None:
            allowance = Allowance(self.options.max_response_bytes)
        if limits.text_output:  # what a text answer wraps each result in (Neon's form)
            allowance.bytes -= RESULT_BYTES
        return Keep(
            limits.max_rows + 1,
            allowance,
            stop,
            text=limits.text_output,
            named=limits.row_format == "object",
        )


def mark(
    held: Checkout, tree: Tree, watch: SchemaWatch, traced: traces.Traces | None = None
) -> None:
    """Context.mark, for the lanes too (app/sql/quick.py)."""
    facts = watch.current
    if held.own_session and (traces.of(tree, facts) if traced is None else traced).forget:
        # Its statements prepared by name were dropped before it ran (Context.traces):
        # at the least a reset, which forgets them.
        held.mark(session.Effect.RESET)
    if facts.known:
        held.mark(session.effect_with(tree, facts))
        return
    found = session.effect(tree)
    held.mark(found)
    if found is not session.Effect.CLOSE and session.runs_unseen(tree, facts):
        held.later(tree, watch)


def ms_since(started: float) -> float:
    """Milliseconds since `started` (time.perf_counter)."""
    return round((time.perf_counter() - started) * 1000, 3)
