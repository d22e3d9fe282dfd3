"""A small PostgreSQL tokenizer: enough to find placeholders, statement ends and keywords
without being fooled by string literals, quoted identifiers, comments or dollar quotes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from app.errors import InvalidSQL


class Kind(Enum):
    """What a token is."""

    WHITESPACE = "whitespace"
    LINE_COMMENT = "line_comment"
    BLOCK_COMMENT = "block_comment"
    STRING = "string"
    ESCAPE_STRING = "escape_string"
    DOLLAR_STRING = "dollar_string"
    QUOTED_IDENT = "quoted_ident"
    POSITIONAL = "positional"
    NAMED = "named"
    WORD = "word"
    SEMICOLON = "semicolon"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Token:
    """A piece of SQL text: its kind, its exact text and where it starts."""

    kind: Kind
    text: str
    start: int


_IDENT_START = r"A-Za-z_\u0080-\U0010ffff"
# Order matters: prefixed literals before words, `::` and `:=` before named parameters.
_MASTER = re.compile(
    rf"""
    (?P<WHITESPACE>\s+)
  | (?P<LINE_COMMENT>--[^\n]*)
  | (?P<ESCAPE_STRING>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<UNCLOSED_E>[eE]')
  | (?P<STRING>(?:[nNbBxX]|[uU]&)?'(?:[^']|'')*')
  | (?P<QUOTED_IDENT>(?:[uU]&)?"(?:[^"]|"")*")
  | (?P<DOLLAR_STRING>\$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?\$(?P=tag)\$)
  | (?P<POSITIONAL>\$\d+)
  | (?P<WORD>[{_IDENT_START}][{_IDENT_START}0-9$]*)
  | (?P<OTHER_CAST>::|:=)
  | (?P<NAMED>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<SEMICOLON>;)
  | (?P<UNCLOSED>[eE]?'|(?:[uU]&)?"|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
  | (?P<OTHER>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_UNCLOSED_WHAT = {"'": "string literal", '"': "quoted identifier", "$": "dollar-quoted string"}


def _block_comment_end(sql: str, start: int) -> int:
    """The index just past the comment opening at `start`; PostgreSQL nests them."""
    depth = 0
    i = start
    n = len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            nxt = min((p for p in (sql.find("/*", i), sql.find("*/", i)) if p != -1), default=-1)
            if nxt == -1:
                break
            i = nxt
    raise InvalidSQL(f"unterminated /* comment starting at character {start + 1}")


def tokens(sql: str) -> Iterator[Token]:
    """Split SQL into tokens whose texts, joined, give back the input exactly."""
    i = 0
    n = len(sql)
    while i < n:
        if sql.startswith("/*", i):
            end = _block_comment_end(sql, i)
            yield Token(Kind.BLOCK_COMMENT, sql[i:end], i)
            i = end
            continue
        match = _MASTER.match(sql, i)
        assert match is not None  # OTHER matches any character
        group = match.lastgroup
        if group in ("UNCLOSED", "UNCLOSED_E"):
            opener = match.group().lstrip("eEuU&")[:1]
            raise InvalidSQL(f"unterminated {_UNCLOSED_WHAT[opener]} starting at character {i + 1}")
        if group == "tag":  # lastgroup is the outer DOLLAR_STRING's inner name here
            group = "DOLLAR_STRING"
        kind = Kind.OTHER if group == "OTHER_CAST" else Kind[str(group)]
        yield Token(kind, match.group(), i)
        i = match.end()


_INSIGNIFICANT = {Kind.WHITESPACE, Kind.LINE_COMMENT, Kind.BLOCK_COMMENT}
_LITERALS = {Kind.STRING, Kind.ESCAPE_STRING, Kind.DOLLAR_STRING}


def significant(sql: str) -> Iterator[Token]:
    """Tokens other than whitespace and comments."""
    return (t for t in tokens(sql) if t.kind not in _INSIGNIFICANT)


def first_keyword(sql: str) -> str | None:
    """The first word of the statement, upper-cased (leading parentheses skipped)."""
    for token in significant(sql):
        if token.kind is Kind.WORD:
            return token.text.upper()
        if token.text != "(":
            return None
    return None


def code_words(sql: str) -> list[str]:
    """The statement's words and symbols, with literals blanked to '' and comments gone:
    what a keyword search should look at."""
    return ["''" if t.kind in _LITERALS else t.text for t in significant(sql)]
