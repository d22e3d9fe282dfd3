"""The database's own code that takes value locks (app/sql/lock_code.py): what a function's
code calls and how often, which functions are lockers, and the rule over a key's statement
that reaches them. Bodies are read by PostgreSQL's own parsers (pglast); the catalog's side
is in test_schema_code.py."""

from __future__ import annotations

import pytest

from app.errors import InvalidSQL
from app.sql import lock_code
from app.sql.lock_bodies import RELATION, function_sites
from app.sql.lock_code import LockCode, lockers
from app.sql.tree import parse

SETS = frozenset({"generate_series", "unnest"})


def plpgsql(body: str) -> dict[str, bool]:
    """What a PL/pgSQL function of `body` calls: its definition as pg_get_functiondef()
    prints it, its source as prosrc holds it (sites)."""
    returns = "SETOF boolean" if "RETURN QUERY" in body else "void"
    definition = (
        f"CREATE OR REPLACE FUNCTION public.f(job bigint)\n RETURNS {returns}\n"
        f" LANGUAGE plpgsql\nAS $function${body}$function$\n"
    )
    return sites("plpgsql", definition, body)


def sites(language: str, definition: str = "", source: str = "") -> dict[str, bool]:
    """Each called name, and whether any call of it may repeat within one call."""
    found: dict[str, bool] = {}
    for name, again, _ in function_sites(language, definition, source, SETS):
        found[name] = found.get(name, False) or again
    return found


@pytest.mark.parametrize(
    ("body", "repeated"),
    [
        ("BEGIN PERFORM pg_advisory_xact_lock(job); END", False),
        ("BEGIN PERFORM pg_advisory_xact_lock(hashtext(job::text)); END", False),
        ("DECLARE ok bool; BEGIN ok := pg_try_advisory_xact_lock(job); END", False),
        ("DECLARE ok bool; BEGIN ok = pg_try_advisory_xact_lock(job); END", False),
        ("BEGIN IF pg_try_advisory_xact_lock(job) THEN RETURN; END IF; END", False),
        ("DECLARE ok bool := pg_try_advisory_xact_lock(job); BEGIN END", False),
        ("BEGIN EXECUTE 'SELECT pg_advisory_xact_lock($1)' USING job; END", False),
        ("BEGIN FOR i IN 1..job LOOP PERFORM pg_advisory_xact_lock(i); END LOOP; END", True),
        # a loop on the argument: the same value every time (a retry loop)
        ("BEGIN WHILE pg_try_advisory_xact_lock(job) LOOP EXIT; END LOOP; END", False),
        (
            "DECLARE r record; BEGIN FOR r IN SELECT pg_advisory_xact_lock(id) FROM t"
            " LOOP END LOOP; END",
            True,
        ),
        ("BEGIN LOOP PERFORM pg_advisory_xact_lock(job); EXIT; END LOOP; END", False),
        # a value of the function's own making (pass 43)
        ("DECLARE t bigint; BEGIN t := nextval('s'); PERFORM pg_advisory_xact_lock(t); END", True),
        ("DECLARE t bigint := job * 2; BEGIN PERFORM pg_advisory_xact_lock(t); END", False),
        (
            "DECLARE o bigint; BEGIN INSERT INTO orders DEFAULT VALUES RETURNING id INTO o;"
            " PERFORM pg_advisory_xact_lock(o); END",
            True,
        ),
        (
            "DECLARE t bigint := job; BEGIN SELECT max(id) INTO t FROM jobs;"
            " PERFORM pg_advisory_xact_lock(t); END",
            True,
        ),
        (
            "DECLARE t bigint := job; BEGIN FOR i IN 1..3 LOOP t := t + i; END LOOP;"
            " PERFORM pg_advisory_xact_lock(t); END",
            True,
        ),
        (
            "DECLARE n bigint; BEGIN GET DIAGNOSTICS n = ROW_COUNT;"
            " PERFORM pg_advisory_xact_lock(n); END",
            True,
        ),
        (
            "DECLARE a bigint[] := ARRAY[1, 2]; x bigint; BEGIN FOREACH x IN ARRAY a LOOP"
            " PERFORM pg_advisory_xact_lock(x); END LOOP; END",
            True,
        ),
        ("BEGIN PERFORM pg_advisory_xact_lock(f.job); END", False),
        ("BEGIN PERFORM pg_advisory_xact_lock(id) FROM jobs; END", True),
        ("BEGIN PERFORM pg_advisory_xact_lock(generate_series(1, job)); END", True),
        ("BEGIN PERFORM pg_advisory_xact_lock(job), generate_series(1, 9); END", True),
        ("BEGIN PERFORM pg_advisory_xact_lock(nextval('s')); END", True),
        ("BEGIN PERFORM pg_advisory_xact_lock((SELECT max(id) FROM jobs)); END", True),
        ("BEGIN UPDATE jobs SET ok = pg_try_advisory_xact_lock(id); END", True),
        ("BEGIN RETURN QUERY SELECT pg_try_advisory_xact_lock(id) FROM jobs; END", True),
        ("BEGIN EXECUTE 'SELECT pg_advisory_xact_lock(id) FROM jobs'; END", True),
    ],
)
def test_a_plpgsql_lock_and_whether_it_may_repeat_in_a_call(body: str, repeated: bool) -> None:
    found = plpgsql(body)
    lock = found.get("pg_advisory_xact_lock", found.get("pg_try_advisory_xact_lock"))
    assert lock is repeated, found


@pytest.mark.parametrize(
    ("source", "repeated"),
    [
        ("SELECT pg_advisory_xact_lock($1)", False),
        ("SELECT pg_advisory_xact_lock(job); SELECT 1", False),
        ("SELECT count(pg_advisory_xact_lock(id)) FROM jobs", True),
        ("SELECT pg_advisory_xact_lock(x) FROM unnest($1) x", True),
        ("VALUES (pg_advisory_xact_lock(job)), (pg_advisory_xact_lock(job + 1))", True),
        ("WITH j AS (SELECT id FROM jobs) SELECT pg_advisory_xact_lock(id) FROM j", True),
        ("SELECT pg_advisory_xact_lock(job) UNION ALL SELECT pg_advisory_xact_lock(-job)", True),
    ],
)
def test_a_sql_body_lock_and_whether_it_may_repeat(source: str, repeated: bool) -> None:
    assert sites("sql", source=source)["pg_advisory_xact_lock"] is repeated


def test_a_begin_atomic_body_is_read_from_its_definition() -> None:
    definition = (
        "CREATE OR REPLACE FUNCTION public.g(job bigint) RETURNS void LANGUAGE sql\n"
        "BEGIN ATOMIC\n SELECT pg_advisory_xact_lock(g.job);\n"
        " SELECT count(pg_try_advisory_xact_lock(jobs.id)) FROM jobs;\nEND\n"
    )
    found = sites("sql", definition)
    assert found["pg_advisory_xact_lock"] is False
    assert found["pg_try_advisory_xact_lock"] is True


def test_a_body_the_parser_cannot_read_counts_every_name_in_it_as_repeated() -> None:
    found = plpgsql("BEGIN PERFORM pg_advisory_xact_lock(job; END")
    assert found["pg_advisory_xact_lock"] is True


def test_lockers_follow_calls_to_any_depth_and_find_what_locks_many() -> None:
    found, many = lockers(
        {
            "claim": [("pg_advisory_xact_lock", False, False)],
            "wrap": [("claim", False, False)],
            "wrap_wrap": [("lower", True, False), ("wrap", False, False)],
            "looped": [("claim", True, False)],
            "calls_looped": [("looped", False, True)],  # (a call with constants: still many)
            "recursive": [("recursive", False, False), ("claim", False, False)],
            "plain": [("lower", True, False), ("count", True, False)],
            "unlinks": [("lo_unlink", False, False)],
            # only constants locked: the same lock however often it runs
            "constant": [("pg_advisory_lock", False, True)],
            "claims_one": [("claim", True, True), ("constant", True, False)],
        }
    )
    assert found == {
        "claim", "wrap", "wrap_wrap", "looped", "calls_looped", "recursive", "unlinks",
    }  # fmt: skip
    assert many == {"looped", "calls_looped", "recursive"}


CODE = LockCode(
    found=frozenset({"claim", "claim_all"}),
    many=frozenset({"claim_all"}),
    read=frozenset({"claimable"}),
    written=frozenset({"stamped"}),
)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT claim($1)",
        "SELECT claim(7), claim(hashtext($1)), pg_advisory_xact_lock(1), public.claim(8)",
        "SELECT claim(1) FROM generate_series(1, 100000)",  # one value: one entry
        "SELECT lower(name) FROM stamped",
        "INSERT INTO claimed SELECT * FROM claimable_not",
        "SELECT pg_catalog.lower(x) FROM t",
    ],
)
def test_what_the_rule_lets_through(sql: str) -> None:
    assert CODE.refusal(parse(sql)) is None


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("SELECT count(claim(i)) FROM generate_series(1, 30000) i", "claim()"),
        ('SELECT count("claim"(i)) FROM generate_series(1, 30000) i', "claim()"),
        ('SELECT count(U&"cl\\0061im"(i)) FROM generate_series(1, 30000) i', "claim()"),
        ("SELECT count(public.claim(id)) FROM jobs", "claim()"),
        ("SELECT count(claim/* x */(id + 1)) FROM jobs", "claim()"),
        ("SELECT count(j.claim) FROM jobs j", "claim()"),
        ("SELECT claim_all()", "claim_all()"),
        ("SELECT claim(1), claim(2), claim(3), claim(4), claim(5)", "lock 5 values"),
        ("SELECT claim(1), claim(2), pg_advisory_xact_lock(3), claim(4), claim(5)", "lock 5"),
        ("SELECT count(*) FROM claimable", "claimable runs code"),
        ("SELECT count(*) FROM public.claimable c JOIN t USING (id)", "claimable runs code"),
        ('SELECT count(*) FROM "claimable"', "claimable runs code"),
        ("INSERT INTO stamped VALUES (1)", "stamped runs code"),
        ("WITH w AS (UPDATE stamped SET x = 1 RETURNING 1) SELECT 1", "stamped runs code"),
    ],
)
def test_what_the_rule_refuses(sql: str, named: str) -> None:
    why = CODE.refusal(parse(sql))
    assert why is not None and named in why, why
    assert "shared lock table" in why


def test_a_request_is_answered_400_naming_its_statement() -> None:
    trees = [parse("SELECT 1"), parse("SELECT count(claim(id)) FROM jobs")]
    with pytest.raises(InvalidSQL) as refused:
        lock_code.check(CODE, trees)
    assert refused.value.extra == {"statement_index": 1}
    lock_code.check(CODE, trees[:1])
    lock_code.check(lock_code.NO_LOCKS, trees)  # nothing of the database's own locks


@pytest.mark.parametrize(
    "source",
    [
        "SELECT 1 FROM (SELECT pg_advisory_lock(4242)) s",
        "SELECT pg_advisory_xact_lock(7) FROM jobs",
        "SELECT pg_advisory_xact_lock(hashtext('jobs')) FROM generate_series(1, 100)",
    ],
)
def test_a_lock_on_a_constant_is_one_lock_however_often_it_runs(source: str) -> None:
    found = sites("sql", source=source)
    assert found.get("pg_advisory_lock", found.get("pg_advisory_xact_lock")) is False


@pytest.mark.parametrize(
    ("defaults", "vary"),
    [
        (None, False),
        ("5, 'x'::text", False),
        ("hashtext('jobs'::text)", False),
        ("nextval('s'::regclass)", True),
        ("7, (random() * 100)::bigint", True),
        ("(clock_timestamp())::text", True),
    ],
)
def test_argument_defaults_that_differ_from_call_to_call(defaults: str | None, vary: bool) -> None:
    assert lock_code.defaults_vary(defaults) is vary


def test_a_locker_whose_default_differs_per_call_locks_many() -> None:
    bodies = {
        "claim": [("pg_advisory_xact_lock", False, False)],
        "constant": [("pg_advisory_xact_lock", False, True)],
    }
    found, many = lockers(bodies, varying={"claim", "constant"})
    assert found == {"claim"}
    assert many == {"claim"}  # (a lock of constants is the same lock whatever is passed)


@pytest.mark.parametrize(
    "body",
    [
        "BEGIN RETURN QUERY EXECUTE 'SELECT id FROM jobs WHERE pg_try_advisory_xact_lock(id)'; END",
        "DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE"
        " 'SELECT id FROM jobs WHERE pg_try_advisory_xact_lock(id)'; END",
    ],
)
def test_a_constant_text_run_as_a_query_is_read(body: str) -> None:
    assert plpgsql(body)["pg_try_advisory_xact_lock"] is True


def test_a_call_in_attribute_notation_and_the_relations_a_body_names_are_sites() -> None:
    assert sites("sql", source="SELECT (job).claim")["claim"] is False  # the argument's
    found = sites("sql", source="SELECT (job).claim, count(*) FROM claimable")
    assert found["claim"] is True  # (over rows, `job` may be a column)
    assert found[RELATION + "claimable"] is True
    found = sites("sql", source="SELECT count(j.claim) FROM jobs j")
    assert found["claim"] is True


def test_a_function_that_reads_a_relation_locking_per_row_locks_many() -> None:
    bodies = {"claim_some": [(RELATION + "claimable", True, False)]}
    assert lockers(bodies) == (frozenset(), frozenset())
    found, many = lockers(bodies, reading=frozenset({"claimable"}))
    assert found == many == {"claim_some"}


def test_an_aggregate_whose_step_locks_locks_many() -> None:
    bodies = {"step": [("pg_advisory_xact_lock", False, False)], "agg": [("step", True, False)]}
    assert lockers(bodies)[1] == {"agg"}
