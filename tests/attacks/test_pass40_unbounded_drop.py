"""Pass 40: behind PgBouncer, code of the owner's that leaves a few hundred temporary tables
under a huge temp_buffers made the cleanup after the COMMIT run for seconds past the
request's own timeout, holding the pooler's server connection: the next key's request timed
out, and mirrorpool's health probe declared the primary down.

    owner:  make40(n), SECURITY DEFINER: set_config('temp_buffers', '32GB', true); one temporary
            table with a row (the session's local buffers are made, 4 M of them: their
            descriptors only, untouched memory); then n temporary tables
    key A:  SELECT make40(300), timeout_ms 1000  -> 200, answered after 3.2 s (its statement
            ran in 0.5 s)
    key B:  SELECT 1, timeout_ms 1000, sent as A's cleanup starts
                                                 -> 504 "did not finish within 1000 ms" after
                                                    2.0 s; logs: "node_down primary: no answer
                                                    within 1 s", "writer_lost"

The cleanup's DISCARD TEMP is quick and well within its statement timeout: it only deletes
catalog rows and schedules each table's files for deletion. The files are deleted when its
unit's transaction commits, at the Sync, where no statement timeout runs and interrupts are
held: for each of the 301 relations PostgreSQL 15 scans every local buffer descriptor
(DropRelFileNodeAllLocalBuffers, 4 M of them at 32GB), about 12 ms a table, 3.5 s in all, on a
server connection PgBouncer keeps for A until every Sync is answered. The same scan runs in a
ROLLBACK of a transaction that created them, and at a backend's exit. B was answered 504 in 3
runs of 3.

Fixed (app/sql/pgbouncer.py _PIN_LOCAL_BUFFERS_SQL): before code that may make temporary
tables, a server session's local buffers are made at its usual temp_buffers, and PostgreSQL
then refuses any other value there. A's code fails on its setting (400, PostgreSQL's own
words), in every spelling of it; code that goes on past the refusal makes its 300 tables
under 8MB of buffers, and they drop in milliseconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import b_while_a_cleans, beside_one_server_connection, query


def _code(name: str, raise_it: str) -> str:
    return (
        f"CREATE FUNCTION {name}(n int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$"
        f" BEGIN {raise_it}"
        " CREATE TEMP TABLE first40 (x int); INSERT INTO first40 VALUES (1);"
        " FOR i IN 1..n LOOP EXECUTE pg_catalog.format('CREATE TEMP TABLE t40_%s (x int)', i);"
        f" END LOOP; RETURN n; END $$"
    )


# The same setting raised in code, spelled five ways; and once past its refusal.
SPELLINGS = {
    "make40": "PERFORM pg_catalog.set_config('temp_buffers', '32GB', true);",
    "local40": "SET LOCAL temp_buffers = '32GB';",
    "quoted40": "EXECUTE 'SET \"temp_buffers\" TO ''32GB''';",
    "escaped40": "PERFORM \"set_config\"(U&'temp\\005fbuffers', '4194304', false);",
    "dynamic40": "EXECUTE pg_catalog.format('SET %I = %L', 'temp_buffers', '32GB');",
}
PAST_IT = (
    "BEGIN PERFORM pg_catalog.set_config('temp_buffers', '32GB', true);"
    " EXCEPTION WHEN invalid_parameter_value THEN NULL; END;"
)
SETUP = (
    *(_code(name, raise_it) for name, raise_it in SPELLINGS.items()),
    _code("past40", PAST_IT),
    *(f"GRANT EXECUTE ON FUNCTION {name}(int) TO {SERVICE}" for name in [*SPELLINGS, "past40"]),
)
TEARDOWN = tuple(f"DROP FUNCTION IF EXISTS {name}(int)" for name in [*SPELLINGS, "past40"])
# A's transaction is over: its cleanup's last statement is running (its unit's commit).
CLEANING = (
    "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND usename = %s"
    " AND query LIKE '%%mirrorpool.cleaned%%'"
)
# And out of the statement's sight: a trigger's code, on a key's INSERT.
TRIGGER_SETUP = (
    "CREATE TABLE rows40 (x int)",
    "CREATE FUNCTION fire40() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN"
    " PERFORM pg_catalog.set_config('temp_buffers', '32GB', true);"
    " CREATE TEMP TABLE fired40 (x int); INSERT INTO fired40 VALUES (1); RETURN NEW; END $$",
    "CREATE TRIGGER fire40 BEFORE INSERT ON rows40 FOR EACH ROW EXECUTE FUNCTION fire40()",
    f"GRANT INSERT ON rows40 TO {SERVICE}",
)
TRIGGER_TEARDOWN = ("DROP TABLE IF EXISTS rows40", "DROP FUNCTION IF EXISTS fire40()")


async def test_code_cannot_raise_temp_buffers_once_a_server_session_is_in_use(
    pair: LocalPair, work_dir: Path
) -> None:
    setup, teardown = (*SETUP, *TRIGGER_SETUP), (*TRIGGER_TEARDOWN, *TEARDOWN)
    async with beside_one_server_connection(pair, work_dir, setup, teardown) as (_, client):
        for sql in [
            *(f"SELECT {name}(300)" for name in SPELLINGS),
            "INSERT INTO rows40 VALUES (1)",
        ]:
            started = time.monotonic()
            a = await query(client, "write", sql, timeout_ms=1000)
            a_took = time.monotonic() - started
            assert a.status_code == 400, (sql, a.text)
            assert "temp_buffers" in a.json()["detail"], (sql, a.text)
            assert a_took < 1.0, f"{sql}: A took {a_took:.1f} s"
            started = time.monotonic()
            b = await query(client, "read", "SELECT 1", timeout_ms=1000)
            b_took = time.monotonic() - started
            assert b.status_code == 200, (sql, b.text)
            assert b_took < 0.5, f"{sql}: B took {b_took:.1f} s"


@pytest.mark.parametrize("first", ["a fresh server session", "one that served before"])
async def test_the_cleanup_of_a_keys_temporary_tables_keeps_to_its_timeout(
    pair: LocalPair, work_dir: Path, first: str
) -> None:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        if first != "a fresh server session":
            warm = await query(client, "write", "SELECT past40(1)", timeout_ms=1000)
            assert warm.status_code == 200, warm.text
        seen = await b_while_a_cleans(pair, client, "SELECT past40(300)", CLEANING)
        a, a_took, b, b_took, said = seen.a, seen.a_took, seen.b, seen.b_took, seen.said
        assert b.status_code == 200, f"{said}: {b.text}"
        assert a.status_code == 200, f"{said}: {a.text}"
        assert a.json()["rows"] == [[300]], a.text
        assert a_took < 2.5, f"A's request, of a 1000 ms timeout: {said}"
        assert b_took < 0.5, said
