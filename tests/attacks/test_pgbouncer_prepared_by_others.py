"""Behind PgBouncer, statements another client of the pooler PREPAREd by SQL stay on the
server session it used (PgBouncer knows only the ones prepared by protocol). Code of the
database's own that a key runs there could list them in pg_prepared_statements, their texts
and so what they hold. So a transaction of ours whose statements may run such code drops
them first (app/sql/transactions.py begin), as one on a session of our own starts with
DEALLOCATE ALL. (A request of ours can leave them too only when its end was cut short: its
own cleanup drops what its code prepared.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import beside_one_server_connection, query, transaction
from tests.pgbouncer import LocalPgBouncer

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETUP = (
    "CREATE OR REPLACE FUNCTION public.prepared_texts() RETURNS text LANGUAGE sql AS"
    " $$ SELECT coalesce(string_agg(statement, ' | '), '') FROM pg_prepared_statements $$",
)
TEARDOWN = ("DROP FUNCTION IF EXISTS public.prepared_texts()",)
SECRET = "SELECT '4111 1111 1111 1111'::text AS card"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def beside(
    pair: LocalPair, work_dir: Path
) -> AsyncIterator[tuple[LocalPgBouncer, httpx.AsyncClient]]:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as both:
        yield both


def another_client_prepares(bouncer: LocalPgBouncer) -> None:
    """A client of the pooler that is not mirrorpool PREPAREs by SQL, and leaves."""
    with psycopg.connect(bouncer.dsn("postgres", user=SERVICE), autocommit=True) as conn:
        conn.execute(f"PREPARE other_client AS {SECRET}")
        texts = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        assert any("4111" in t for (t,) in texts)  # it is there for the next client


@pytest.mark.parametrize("how", ["query", "transaction"])
async def test_own_code_finds_no_statement_another_client_prepared(
    beside: tuple[LocalPgBouncer, httpx.AsyncClient], how: str
) -> None:
    bouncer, client = beside
    another_client_prepares(bouncer)
    if how == "query":
        r = await query(client, "read", "SELECT prepared_texts() AS t")
    else:
        r = await transaction(client, "read", "SELECT 1 AS one", "SELECT prepared_texts() AS t")
    assert r.status_code == 200, r.text
    rows = r.json()["results"][-1]["rows"] if how == "transaction" else r.json()["rows"]
    assert "4111" not in rows[0][0], f"a read key's code read another client's statement: {rows}"
