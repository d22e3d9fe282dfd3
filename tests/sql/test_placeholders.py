"""`:name` / `$n` binding: placeholders found (by PostgreSQL's scanner) only where they really
are, and PostgreSQL's own errors for text it cannot read."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import DatabaseError, InvalidParameters, InvalidSQL
from app.sql.placeholders import bind


@pytest.mark.parametrize(
    ("sql", "message", "position"),
    [
        ("SELECT 'open", "unterminated quoted string", 8),
        ('SELECT "open', "unterminated quoted identifier", 8),
        ("SELECT $q$ open", "unterminated dollar-quoted string", 8),
        ("SELECT /* /* */", "unterminated /* comment", 8),
        ("SELECT E'\\'", "unterminated quoted string", 8),
        ("SELECT 1 FROM WHERE", 'syntax error at or near "WHERE"', 15),
    ],
)
def test_bad_text_answers_postgresqls_own_syntax_error(
    sql: str, message: str, position: int
) -> None:
    with pytest.raises(DatabaseError, match=re.escape(message)) as caught:
        bind(sql, None)
    assert caught.value.sqlstate == "42601"
    assert caught.value.extra["database"]["position"] == position
    assert caught.value.extra["database"]["message"].startswith(message)


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


@pytest.mark.parametrize(
    "sql", ["SELECT 1; SELECT 2", "SELECT 1;;DELETE FROM t", "/* ; */ SELECT 1; -- x\n SELECT 2"]
)
def test_more_than_one_statement(sql: str) -> None:
    with pytest.raises(InvalidSQL, match=r"more than one statement"):
        bind(sql, None)


def test_one_statement_with_semicolons_inside_its_body() -> None:
    sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END"
    assert bind(sql, None).sql == sql


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", "/* x */ ;"])
def test_empty_sql(sql: str) -> None:
    with pytest.raises(InvalidSQL, match="empty"):
        bind(sql, None)


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_any_text_binds_or_fails_with_a_clear_error(text: str) -> None:
    try:
        bound = bind(text, None)
    except (InvalidSQL, InvalidParameters, DatabaseError) as exc:
        refused: Exception | None = exc
    else:
        refused = None
    if refused is not None:
        assert str(refused)
        return
    assert text.startswith(bound.sql)


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
        f"{lit} {com}, :p{i}" for i, (lit, com) in enumerate(zip(literals, comments, strict=True))
    )
    params = {f"p{i}": i for i in range(len(bodies))}
    bound = bind(sql, params)
    for lit, com in zip(literals, comments, strict=True):
        assert lit in bound.sql
        assert com in bound.sql
    assert bound.params == list(range(len(bodies)))
    assert ":p" not in bound.sql.replace("'", "").split("*/")[-1]
