"""Statements no request may send through mirrorpool's shared sessions, in any mode.

Pooled connections are shared by every key, one request at a time, and mirrorpool runs
each request inside limits it sets itself. So these are refused before they run:

- PREPARE, EXECUTE, DEALLOCATE, DISCARD: mirrorpool prepares statements by name on pooled
  connections itself; a request that could replace or drop them could make another key's
  next request run its SQL.
- transaction control (BEGIN, COMMIT, ROLLBACK, END, ABORT, START, PREPARE TRANSACTION):
  it would end the transaction that carries the request's READ ONLY mode, role and
  timeouts, and with it /v1/transaction's all-or-nothing promise. SAVEPOINT and
  ROLLBACK TO SAVEPOINT stay allowed.
- COPY to or from the client (STDIN, STDOUT): the HTTP API has no copy channel.
- in a read-only request, anything that would switch the transaction to read-write
  (SET TRANSACTION READ WRITE, SET SESSION CHARACTERISTICS, transaction_read_only).

The check reads the statement's own words (literals and comments skipped, app/sql/lexer.py);
it cannot see into function bodies.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from app.sql.lexer import code_words

_PREPARED = {"PREPARE", "EXECUTE", "DEALLOCATE", "DISCARD"}
_CONTROL = {"BEGIN", "START", "COMMIT", "END", "ABORT"}


def refusal(sql: str, read_only: bool) -> str | None:
    """Why `sql` may not run here, or None when it may."""
    return (
        _why(sql, read_only) if len(sql) <= _CACHEABLE_LENGTH else _why.__wrapped__(sql, read_only)
    )


@lru_cache(maxsize=1024)
def _why(sql: str, read_only: bool) -> str | None:
    words = [w.upper() for w in code_words(sql) if w != "("]
    if not words:
        return None
    first, rest = words[0], words[1:]
    if ends_transaction(first, rest):
        return (
            f"{first} is refused: a request runs inside a transaction mirrorpool opens and "
            "closes itself (with its read-only mode, role and timeouts); send several "
            "statements to /v1/transaction, and use SAVEPOINT / ROLLBACK TO SAVEPOINT inside it"
        )
    if first in _PREPARED:
        return (
            f"{first} is refused: mirrorpool prepares statements on its pooled connections "
            "itself; send the statement with its parameters"
        )
    if first == "COPY" and ({"STDIN", "STDOUT"} & set(rest)):
        return (
            "COPY to or from the client is refused: HTTP has no copy channel; use "
            "/v1/query/stream to read many rows, and INSERT ... SELECT unnest($1) to write them"
        )
    if read_only and _escapes_read_only(words):
        return "a read-only request cannot switch its transaction to read-write"
    return None


def _escapes_read_only(words: list[str]) -> bool:
    text = " ".join(words)
    return (
        "READ WRITE" in text
        or "TRANSACTION_READ_ONLY" in text
        or "DEFAULT_TRANSACTION_READ_ONLY" in text
        or "CHARACTERISTICS" in words
    )


def ends_transaction(first: str | None, rest: Sequence[str | None]) -> bool:
    """True for a statement, by its first words (upper-cased), that begins or ends a
    transaction: BEGIN, START, COMMIT, END, ABORT, PREPARE TRANSACTION, and ROLLBACK but
    not ROLLBACK [WORK | TRANSACTION] TO SAVEPOINT."""
    if first == "ROLLBACK":
        return "TO" not in rest[:2]
    return first in _CONTROL or (first == "PREPARE" and rest[:1] == ["TRANSACTION"])


_CACHEABLE_LENGTH = 8192
