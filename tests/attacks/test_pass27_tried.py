"""Twenty-seventh review pass (attacker): what was tried and held.

Behind PgBouncer (one server connection), a deferred constraint trigger of the schema's that
defers its event again (pass 26's chain) runs at the COMMIT of the write key's INSERT, after
app/sql/pgbouncer.py finish's first cleanup; at its last row it leaves something in the
server session and then fails, so the COMMIT fails and the second cleanup is skipped:

- its nextval() (lastval) is not read by the read key's code of the schema's (a function
  returning lastval()): the next transaction's opening discards the sequences before code;
- its setseed() does not set what the read key's random() draws: a statement drawing from
  random() is reseeded in its opening;
- its LISTEN does not stay: a LISTEN is applied at a COMMIT that succeeds only, and
  pg_listening_channels() read by the read key's code is empty;
- its session settings (a custom one and statement_timeout, by set_config(..., false)) are
  rolled back with it: the read key sees neither;
- the same trigger when the COMMIT succeeds: its PREPAREd statement is dropped by the
  second cleanup (the DO block of _DEALLOCATE_SQL_PREPARED), the read key's view of
  pg_prepared_statements lists nothing.
(The hole of this pass: test_pass27_pgbouncer_failed_commit.py, the same trigger's PREPARE
at a COMMIT that fails.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import behind_one_server_connection, query

pytestmark = pytest.mark.asyncio(loop_scope="module")

# trig27t: at the chain's last row, what `v` names is left in the session; a `v` starting
# with 'fail' then fails the COMMIT.
SETUP: tuple[str, ...] = (
    "DROP VIEW IF EXISTS public.ps27t",
    "DROP TABLE IF EXISTS public.t27t",
    "DROP SEQUENCE IF EXISTS public.s27t",
    "CREATE SEQUENCE public.s27t START 2700",
    "CREATE OR REPLACE FUNCTION public.trig27t() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN IF NEW.n > 0 THEN SET CONSTRAINTS ALL DEFERRED;"
    " INSERT INTO public.t27t VALUES (NEW.n - 1, NEW.v);"
    f" ELSIF session_user = '{SERVICE}' THEN"
    " IF NEW.v LIKE '%seq' THEN PERFORM pg_catalog.nextval('public.s27t'); END IF;"
    " IF NEW.v LIKE '%seed' THEN PERFORM pg_catalog.setseed(0.27); END IF;"
    " IF NEW.v LIKE '%listen' THEN EXECUTE 'LISTEN ch27t'; END IF;"
    " IF NEW.v LIKE '%setting' THEN PERFORM pg_catalog.set_config('app.x27t', 'evil', false);"
    " PERFORM pg_catalog.set_config('statement_timeout', '27', false); END IF;"
    " IF NEW.v LIKE '%prepare' THEN"
    " EXECUTE 'PREPARE ok27t AS SELECT ''written-27''::text'; END IF;"
    " IF NEW.v LIKE 'fail%' THEN RAISE EXCEPTION 'late 27'; END IF;"
    " END IF; RETURN NULL; END $$",
    "CREATE TABLE public.t27t (n int, v text)",
    "CREATE CONSTRAINT TRIGGER c27t AFTER INSERT ON public.t27t DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION public.trig27t()",
    "CREATE OR REPLACE FUNCTION public.last27t() RETURNS bigint LANGUAGE plpgsql AS"
    " $$ BEGIN RETURN lastval(); EXCEPTION WHEN object_not_in_prerequisite_state THEN"
    " RETURN NULL; END $$",
    "CREATE OR REPLACE FUNCTION public.channels27t() RETURNS text LANGUAGE sql AS"
    " $$ SELECT coalesce(string_agg(c, ','), '') FROM pg_catalog.pg_listening_channels() c $$",
    "CREATE VIEW public.ps27t AS SELECT name, statement FROM pg_catalog.pg_prepared_statements"
    " WHERE from_sql",
    f"GRANT SELECT, INSERT ON public.t27t TO {SERVICE}",
    f"GRANT USAGE ON SEQUENCE public.s27t TO {SERVICE}",
    f"GRANT SELECT ON public.ps27t TO {SERVICE}",
)
TEARDOWN = (
    "DROP VIEW IF EXISTS public.ps27t",
    "DROP TABLE IF EXISTS public.t27t",
    "DROP FUNCTION IF EXISTS public.trig27t(), public.last27t(), public.channels27t()",
    "DROP SEQUENCE IF EXISTS public.s27t",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def behind(pair: LocalPair, work_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with behind_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as client:
        yield client


async def written(client: httpx.AsyncClient, v: str) -> None:
    """The write key's INSERT whose COMMIT runs the chain's last trigger with `v`."""
    r = await query(client, "write", f"INSERT INTO t27t VALUES (2, '{v}')")
    if v.startswith("fail"):
        assert r.status_code == 400 and "late 27" in r.text, r.text
    else:
        assert r.status_code == 200, r.text


async def read(client: httpx.AsyncClient, sql: str) -> list[list[object]]:
    r = await query(client, "read", sql)
    assert r.status_code == 200, r.text
    rows: list[list[object]] = r.json()["rows"]
    return rows


async def test_a_failed_commits_nextval_is_not_read_by_the_next_keys_code(
    behind: httpx.AsyncClient,
) -> None:
    await written(behind, "fail-seq")
    assert await read(behind, "SELECT last27t() AS last") == [[None]]


async def test_a_failed_commits_seed_does_not_set_the_next_keys_random(
    behind: httpx.AsyncClient, pair: LocalPair
) -> None:
    with pair.primary.connect() as conn:
        conn.execute("SELECT setseed(0.27)")
        row = conn.execute("SELECT random()").fetchone()
    assert row is not None
    seeded = row[0]
    await written(behind, "fail-seed")
    rows = await read(behind, "SELECT random() AS r")
    assert rows[0][0] != seeded, "the read key drew the value after the write key's seed"


async def test_a_failed_commits_listen_does_not_stay(behind: httpx.AsyncClient) -> None:
    await written(behind, "fail-listen")
    assert await read(behind, "SELECT channels27t() AS c") == [[""]]


async def test_a_failed_commits_settings_do_not_stay(behind: httpx.AsyncClient) -> None:
    await written(behind, "fail-setting")
    rows = await read(
        behind,
        "SELECT coalesce(current_setting('app.x27t', true), 'undefined') AS x,"
        " current_setting('statement_timeout') AS t",
    )
    assert rows[0][0] != "evil" and rows[0][1] != "27ms", rows


async def test_a_committed_triggers_prepared_statement_is_dropped(
    behind: httpx.AsyncClient,
) -> None:
    await written(behind, "ok-prepare")
    assert await read(behind, "SELECT name, statement FROM ps27t") == []
