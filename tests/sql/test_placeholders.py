"""The tokenizer and `:name` / `$n` binding: placeholders found only where they really are."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import InvalidParameters, InvalidSQL
from app.sql.lexer import Kind, code_words, first_keyword, tokens
from app.sql.placeholders import bind


@pytest.mark.parametrize(
    ("sql", "kind", "text"),
    [
        ("'it''s'", Kind.STRING, "'it''s'"),
        ("E'it\\'s'", Kind.ESCAPE_STRING, "E'it\\'s'"),
        ("U&'d\\0061t'", Kind.STRING, "U&'d\\0061t'"),
        ("$$ a ' b $$", Kind.DOLLAR_STRING, "$$ a ' b $$"),
        ("$fn$ $x$ ;$fn$", Kind.DOLLAR_STRING, "$fn$ $x$ ;$fn$"),
        ('"we""ird :x"', Kind.QUOTED_IDENT, '"we""ird :x"'),
        ("-- c ; :x", Kind.LINE_COMMENT, "-- c ; :x"),
        ("/* a /* b */ c */", Kind.BLOCK_COMMENT, "/* a /* b */ c */"),
        ("$12", Kind.POSITIONAL, "$12"),
        (":name_1", Kind.NAMED, ":name_1"),
        ("foo$1", Kind.WORD, "foo$1"),
        ("::", Kind.OTHER, "::"),
        (";", Kind.SEMICOLON, ";"),
    ],
)
def test_token_kinds(sql: str, kind: Kind, text: str) -> None:
    first = next(tokens(sql))
    assert (first.kind, first.text, first.start) == (kind, text, 0)


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("SELECT 'open", "string literal starting at character 8"),
        ('SELECT "open', "quoted identifier starting at character 8"),
        ("SELECT $q$ open", "dollar-quoted string starting at character 8"),
        ("SELECT /* /* */", "/* comment starting at character 8"),
        ("SELECT E'\\'", "string literal starting at character 8"),
    ],
)
def test_unterminated_text_is_invalid_sql(sql: str, what: str) -> None:
    with pytest.raises(InvalidSQL, match="unterminated " + what.replace("/*", r"/\*")):
        list(tokens(sql))


def test_first_keyword_and_code_words_skip_comments_and_literals() -> None:
    assert first_keyword("  -- lead\n/* x */ ((select 1))") == "SELECT"
    assert first_keyword("'x'") is None
    assert code_words("ALTER /* DROP TABLE */ t ADD c text DEFAULT 'DROP TABLE x'") == [
        "ALTER", "t", "ADD", "c", "text", "DEFAULT", "''",
    ]  # fmt: skip


def test_named_placeholders_only_outside_literals_comments_and_casts() -> None:
    sql = (
        "SELECT :a::text, ':b', E':c\\'', $$ :d $$, $t$ :e $t$, \"x:f\", x::int, "
        "f(p := 1), arr[1:2] -- :g\n/* :h /* :i */ */ WHERE y = :a OR z = :j;  ;"
    )
    bound = bind(sql, {"a": 1, "j": 2})
    assert bound.names == ["a", "j"]
    assert bound.params == [1, 2]
    assert bound.sql == sql.replace("SELECT :a::", "SELECT $1::").replace(
        "y = :a", "y = $1"
    ).replace("z = :j;  ;", "z = $2")


def test_positional_placeholders_and_percent_signs() -> None:
    bound = bind("SELECT $2, $1 WHERE x LIKE 'a%' AND y % 2 = 0 AND '$3' = '$3'", ["a", "b"])
    assert bound.params == ["a", "b"]
    assert bound.sql.endswith("'$3' = '$3'")


@pytest.mark.parametrize(
    ("sql", "params", "missing", "extra"),
    [
        ("SELECT $1, $2", [1], ["$2"], []),
        ("SELECT $1", [1, 2], [], ["$2"]),
        ("SELECT $1, $3", [1, 2, 3], [], ["$2"]),
        ("SELECT 1", [1], [], ["$1"]),
        ("SELECT :a, :b", {"a": 1}, [":b"], []),
        ("SELECT :a", {"a": 1, "c": 2}, [], [":c"]),
        ("SELECT :a", {"b": 1}, [":a"], [":b"]),
    ],
)
def test_mismatches_name_the_parameters(
    sql: str, params: Any, missing: list[str], extra: list[str]
) -> None:
    with pytest.raises(InvalidParameters) as caught:
        bind(sql, params)
    assert caught.value.extra["missing"] == missing
    assert caught.value.extra["extra"] == extra
    for name in missing + extra:
        assert name in caught.value.detail


@pytest.mark.parametrize(
    ("sql", "params", "fragment"),
    [
        ("SELECT :a", [1], "send params as an object"),
        ("SELECT :a", None, "send params as an object"),
        ("SELECT $1", {"a": 1}, "send params as an array"),
        ("SELECT $1, :a", [1], "mixes"),
    ],
)
def test_wrong_shape_of_params(sql: str, params: Any, fragment: str) -> None:
    with pytest.raises(InvalidParameters, match=fragment):
        bind(sql, params)


@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "SELECT 1;;DELETE FROM t", "/* */ ; x"])
def test_more_than_one_statement(sql: str) -> None:
    with pytest.raises(InvalidSQL, match=r"more than one statement|empty"):
        bind(sql, None)


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", "/* x */ ;"])
def test_empty_sql(sql: str) -> None:
    with pytest.raises(InvalidSQL, match="empty"):
        bind(sql, None)


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_tokens_rebuild_any_text_exactly(text: str) -> None:
    try:
        pieces = list(tokens(text))
    except InvalidSQL:
        return
    assert "".join(t.text for t in pieces) == text
    assert all(t.start == sum(len(p.text) for p in pieces[:i]) for i, t in enumerate(pieces))


_literal_body = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    max_size=30,
)


@settings(max_examples=200)
@given(st.lists(_literal_body, min_size=1, max_size=5))
def test_literals_survive_binding_unchanged(bodies: list[str]) -> None:
    literals = ["'" + b.replace("'", "''") + "'" for b in bodies]
    comments = ["/* " + b.replace("*/", "") + " */" for b in bodies]
    sql = "SELECT " + ", ".join(
        f"{lit} {com} :p{i}" for i, (lit, com) in enumerate(zip(literals, comments, strict=True))
    )
    params = {f"p{i}": i for i in range(len(bodies))}
    bound = bind(sql, params)
    for lit, com in zip(literals, comments, strict=True):
        assert lit in bound.sql
        assert com in bound.sql
    assert bound.params == list(range(len(bodies)))
    assert ":p" not in bound.sql.replace("'", "").split("*/")[-1]
