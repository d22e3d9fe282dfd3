"""Statements that transaction pooling (MIRRORPOOL_PGBOUNCER) cannot run safely, read from
their parse trees (app/sql/tree.py).

Behind PgBouncer in transaction mode a server session is shared by every client of the
pooler, one transaction at a time. What a statement leaves in the session after its
transaction (a SET without LOCAL, a session advisory lock, a temporary table, a prepared
statement, a LISTEN, a holdable cursor) stays on a server connection the next transaction
of any client may get, and mirrorpool cannot reset it: its reset would run on whichever
server connection it is handed then. Nor can a request end mirrorpool's transaction
(COMMIT, ROLLBACK): the settings it SETs LOCAL would end with it. So these statements are
refused before they run, each with the transaction-scoped form that does the same job.
What a function's or a DO block's body does is not in the tree, and not checked here.
"""

from __future__ import annotations

from app.sql import catalog
from app.sql.refusals import ends_transaction
from app.sql.tree import Tree, kept_on_tree

# (what the statement does, why that breaks, what to use instead)
Finding = tuple[str, str, str]

_OUTLIVES = (
    "it would outlive the request's transaction on a server connection that other "
    "clients of the pooler get next"
)
_TRANSACTION_CONTROL: Finding = (
    "a transaction control statement",
    "it would end the transaction that carries the request's timeouts and settings",
    "send several statements to /v1/transaction, and use SAVEPOINT / ROLLBACK TO SAVEPOINT "
    "inside one",
)
_BY_KIND: dict[str, Finding] = {
    "DiscardStmt": ("DISCARD", _OUTLIVES, "requests keep no session state to discard"),
    "PrepareStmt": ("PREPARE", _OUTLIVES, "send the statement itself with parameters"),
    "DeallocateStmt": ("DEALLOCATE", _OUTLIVES, "requests prepare nothing"),
    "ListenStmt": ("LISTEN", _OUTLIVES, "connect to the primary directly to listen"),
    "UnlistenStmt": ("UNLISTEN", _OUTLIVES, "requests listen to nothing"),
    "LoadStmt": ("LOAD", _OUTLIVES, "preload the library in the server's configuration"),
}
_TEMP: Finding = (
    "a temporary object (ON COMMIT DROP too)",
    "pg_temp is searched first for relations, so PL/pgSQL functions compiled under it keep "
    "its column types for the life of the server connection, for other clients of the "
    "pooler (and whatever it leaves could outlive the transaction)",
    "use a real table (UNLOGGED for scratch data), or serve without PgBouncer",
)


def refusal(tree: Tree) -> str | None:
    """Why the statement cannot run behind a transaction pooler, with what to use instead;
    None when it can."""
    found = session_change(tree)
    if found is None:
        return None
    what, why, instead = found
    return f"MIRRORPOOL_PGBOUNCER=true refuses {what}: {why}; {instead}"


@kept_on_tree
def session_change(tree: Tree) -> Finding | None:  # noqa: PLR0911 - one return per rule
    """What in the statement changes the server session beyond its transaction, if anything."""
    if ends_transaction(tree):
        return _TRANSACTION_CONTROL
    for kind, finding in _BY_KIND.items():
        if kind in tree.kinds:
            return finding
    setting = _setting_change(tree)
    if setting is not None:
        return setting
    if tree.hold_cursor:
        return ("DECLARE ... WITH HOLD", _OUTLIVES, "declare the cursor without HOLD")
    if tree.temp:
        return _TEMP
    if _sets_sequence_owner(tree):
        # A serial column's sequence of an ON COMMIT DROP table is temporary and goes with the
        # table; cut loose (OWNED BY NONE) it outlives the transaction, and so does a view
        # PostgreSQL then makes temporary over it (pg_temp is searched first: it would answer
        # for the schema's table of the same name).
        return (
            "ALTER SEQUENCE ... OWNED BY",
            "a temporary sequence cut loose from its ON COMMIT DROP table would outlive the "
            "request's transaction on a server connection that other clients of the pooler "
            "get next",
            "set sequence ownership in a migration",
        )
    locks = sorted(tree.maybe_called & catalog.SESSION_LOCKS)
    if locks:
        return (
            f"{locks[0]}() (a session advisory lock)",
            _OUTLIVES,
            "use pg_advisory_xact_lock() or pg_try_advisory_xact_lock(), released at "
            "the end of the transaction",
        )
    if any(not call.local for call in tree.set_configs):
        return ("set_config(..., false)", _OUTLIVES, "use set_config(name, value, true)")
    reading = _shaping_setting(tree)
    if reading is not None:
        return (
            f"setting {reading}",
            "PL/pgSQL keeps each function it compiles, with its plans, for the life of the "
            "server connection: what a function called under it read (names, literals, the "
            "plan) would stay that way for other clients of the pooler, and a custom setting "
            "stays defined for them; no reset can run here",
            "only " + ", ".join(sorted(_ALLOWED_SETTINGS)) + " may be set behind PgBouncer; "
            "qualify names with their schema and write times with their zone",
        )
    survivors = sorted(tree.maybe_called & catalog.SURVIVES_RESET)
    if survivors:
        return (f"{survivors[0]}()", _OUTLIVES, "requests keep no state in the session")
    return None


# The settings a request may set behind a pooler (with LOCAL, or set_config(..., true)):
# timeouts and commit durability, which shape no plan and no reading. Any other setting can
# (search_path, TimeZone, timezone_abbreviations, quote_all_identifiers, the planner's
# enable_* and costs, array_nulls...): a function compiled or planned under it keeps that in
# the server session, which mirrorpool cannot reset; a custom (dotted) one stays defined.
_ALLOWED_SETTINGS = frozenset(
    {
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "transaction_timeout",
        "synchronous_commit",
        "transaction_isolation",
        "transaction_deferrable",
        "transaction_read_only",
    }
)


def _shaping_setting(tree: Tree) -> str | None:
    """A setting the statement changes, in any scope, that a request may not change here."""
    names = {
        n
        for s in tree.settings
        if not (s.kind == "VAR_SET_MULTI" and s.name == "transaction")  # SET TRANSACTION
        for n in s.options | {s.name or ""}
    }
    names |= {c.name for c in tree.set_configs if c.name}
    found = names - _ALLOWED_SETTINGS
    return min(found) if found else None


def _setting_change(tree: Tree) -> Finding | None:
    """A SET or RESET that outlives the transaction."""
    for setting in tree.settings:
        if setting.kind == "VAR_SET_MULTI":
            if setting.name == "session characteristics":
                return (
                    "SET SESSION CHARACTERISTICS",
                    _OUTLIVES,
                    "use SET TRANSACTION inside /v1/transaction",
                )
        elif setting.kind in ("VAR_RESET", "VAR_RESET_ALL"):
            return ("RESET", _OUTLIVES, "use SET LOCAL name TO DEFAULT")
        elif not setting.local:
            return ("SET without LOCAL", _OUTLIVES, "use SET LOCAL, which lasts until its end")
    return None


def _sets_sequence_owner(tree: Tree) -> bool:
    """True for ALTER SEQUENCE ... OWNED BY (NONE or another column)."""
    body = tree.node.get("AlterSeqStmt")
    if body is None:
        return False
    options = body.get("options") or []
    return any(o.get("DefElem", {}).get("defname") == "owned_by" for o in options)
