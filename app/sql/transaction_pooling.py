"""Statements that transaction pooling (MIRRORPOOL_PGBOUNCER) cannot run safely.

Behind PgBouncer in transaction mode a server session is shared by every client of the
pooler, one transaction at a time. What a statement leaves in the session after its
transaction (a SET without LOCAL, a session advisory lock, a temporary table, a prepared
statement, a LISTEN, a holdable cursor) stays on a server connection the next transaction
of any client may get, and mirrorpool cannot reset it: its reset would run on whichever
server connection it is handed then. Nor can a request end mirrorpool's transaction
(COMMIT, ROLLBACK): the settings it SETs LOCAL would end with it. So these statements are
refused before they run, each with the transaction-scoped form that does the same job.

The check reads the statement's own words (string literals, quoted identifiers and
comments skipped); it cannot see into function bodies.
"""

from __future__ import annotations

from functools import lru_cache

from app.sql.lexer import Kind, Token, significant
from app.sql.refusals import ends_transaction

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
_FIRST_WORD: dict[str, Finding] = {
    "RESET": ("RESET", _OUTLIVES, "use SET LOCAL name TO DEFAULT"),
    "DISCARD": ("DISCARD", _OUTLIVES, "requests keep no session state to discard"),
    "PREPARE": ("PREPARE", _OUTLIVES, "send the statement itself with parameters"),
    "DEALLOCATE": ("DEALLOCATE", _OUTLIVES, "requests prepare nothing"),
    "LISTEN": ("LISTEN", _OUTLIVES, "connect to the primary directly to listen"),
    "UNLISTEN": ("UNLISTEN", _OUTLIVES, "requests listen to nothing"),
    "LOAD": ("LOAD", _OUTLIVES, "preload the library in the server's configuration"),
}
# SET forms that last only until the end of the transaction.
_SET_SCOPED = {"LOCAL", "TRANSACTION", "CONSTRAINTS"}
_SESSION_LOCKS = {
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_LOCK_SHARED",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_LOCK_SHARED",
    "PG_ADVISORY_UNLOCK",
    "PG_ADVISORY_UNLOCK_SHARED",
    "PG_ADVISORY_UNLOCK_ALL",
}
_TEMP = {"TEMP", "TEMPORARY"}


def refusal(sql: str) -> str | None:
    """Why `sql` cannot run behind a transaction pooler, with what to use instead; None
    when it can."""
    found = session_change(sql) if len(sql) <= _CACHEABLE_LENGTH else _scan(sql)
    if found is None:
        return None
    what, why, instead = found
    return f"MIRRORPOOL_PGBOUNCER=true refuses {what}: {why}; {instead}"


@lru_cache(maxsize=1024)
def session_change(sql: str) -> Finding | None:
    """What in `sql` changes the server session beyond its transaction, if anything."""
    return _scan(sql)


_CACHEABLE_LENGTH = 8192


def _scan(sql: str) -> Finding | None:
    toks = list(significant(sql))
    words = [t.text.upper() if t.kind is Kind.WORD else None for t in toks]
    at = 0
    while at < len(toks) and toks[at].text == "(":
        at += 1
    first = words[at] if at < len(toks) else None
    return _by_statement(first, words[at + 1 :]) or _by_function(words, toks)


def _by_statement(first: str | None, rest: list[str | None]) -> Finding | None:
    """What the statement itself, by its leading words, leaves in the session."""
    found = _FIRST_WORD.get(first or "")
    creates_temp = first == "CREATE" and bool({*_TEMP, "PG_TEMP"} & set(rest[:6]))
    selects_into_temp = first == "SELECT" and any(_follows(rest, "INTO", t) for t in _TEMP)
    if ends_transaction(first, rest):
        found = _TRANSACTION_CONTROL
    elif first == "SET" and (not rest or rest[0] not in _SET_SCOPED):
        found = ("SET without LOCAL", _OUTLIVES, "use SET LOCAL, which lasts until its end")
    elif first == "DECLARE" and _follows(rest, "WITH", "HOLD"):
        found = ("DECLARE ... WITH HOLD", _OUTLIVES, "declare the cursor without HOLD")
    elif (creates_temp or selects_into_temp) and not _follows(rest, "ON", "COMMIT", "DROP"):
        found = (
            "a temporary object",
            _OUTLIVES,
            "create it with ON COMMIT DROP inside /v1/transaction, or use a real table",
        )
    return found


def _by_function(words: list[str | None], toks: list[Token]) -> Finding | None:
    """A function call anywhere in the statement that changes the session."""
    for word in words:
        if word in _SESSION_LOCKS:
            return (
                f"{word.lower()}() (a session advisory lock)",
                _OUTLIVES,
                "use pg_advisory_xact_lock() or pg_try_advisory_xact_lock(), released at "
                "the end of the transaction",
            )
    if _sets_config_for_the_session(toks):
        return ("set_config(..., false)", _OUTLIVES, "use set_config(name, value, true)")
    return None


def _follows(words: list[str | None], *sequence: str) -> bool:
    """True when `sequence` appears in `words`, one word right after the other."""
    n = len(sequence)
    return any(tuple(words[i : i + n]) == sequence for i in range(len(words) - n + 1))


def _sets_config_for_the_session(toks: list[Token]) -> bool:
    """True for a set_config() call whose third argument is not the literal true."""
    for i, tok in enumerate(toks):
        if tok.kind is not Kind.WORD or tok.text.upper() != "SET_CONFIG":
            continue
        args = _arguments(toks, i + 1)
        if args is None or len(args) != 3 or not _is_true(args[2]):
            return True
    return False


def _arguments(toks: list[Token], start: int) -> list[list[Token]] | None:
    """The top-level arguments of the call whose `(` is at `start`; None if it is not one."""
    if start >= len(toks) or toks[start].text != "(":
        return None
    args: list[list[Token]] = [[]]
    depth = 0
    for tok in toks[start:]:
        if tok.text in ("(", "["):
            depth += 1
            if depth == 1:
                continue
        elif tok.text in (")", "]"):
            depth -= 1
            if depth == 0:
                return args
        elif tok.text == "," and depth == 1:
            args.append([])
            continue
        args[-1].append(tok)
    return None


def _is_true(arg: list[Token]) -> bool:
    """The literal true, as a word or a string (`true`, `'t'`, `'on'`, ...)."""
    if len(arg) != 1:
        return False
    text = arg[0].text
    if arg[0].kind is Kind.WORD:
        return text.upper() == "TRUE"
    if arg[0].kind is Kind.STRING:
        return text[1:-1].strip().lower() in {"t", "true", "y", "yes", "on", "1"}
    return False
