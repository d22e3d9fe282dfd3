"""Eleventh review pass (attacker): behind PgBouncer, POST /sql's own output styles reach
another client's function plans.

Pass 9 left behind PgBouncer only the settings that change no reading of a literal
(app/sql/transaction_pooling.py): a PL/pgSQL function's plans are made once per backend and
keep the literals as read then, and a server session behind the pooler is never reset. But
POST /sql itself runs under `SET LOCAL DateStyle = 'ISO, MDY'` there (transactions.begin with
text=True adds text_output.POSTGRES_STYLES to the local settings), where every other request
runs under mirrorpool's pinned `ISO, YMD`. An ambiguous date literal in a function of the
schema's own, `'03/04/05'::date`, is 2003-04-05 under YMD and 2005-03-04 under MDY.

One /sql call of the function by a read key (a READ ONLY transaction) plans it under MDY;
every later client of that server connection, any key on /v1/query, then gets 2005-03-04.
(With sessions of mirrorpool's own, /sql marks its connection for DISCARD ALL, which
invalidates the plans: not so behind the pooler.) The reverse too: a plan made under YMD by a
/v1/query answers /sql. The safe behaviour asserted: each gets its own reading.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, query
from tests.attacks.test_pgbouncer_sessions import behind, bouncer  # noqa: F401
from tests.conftest import as_owner


@pytest.fixture
def dated(pair: LocalPair) -> Iterator[str]:
    name = f"mp11_dated_{uuid.uuid4().hex[:8]}"
    as_owner(
        pair,
        f"CREATE FUNCTION {name}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        " BEGIN RETURN to_char('03/04/05'::date, 'YYYY-MM-DD'); END $$",
        f"GRANT EXECUTE ON FUNCTION {name}() TO PUBLIC",
    )
    yield name
    as_owner(pair, f"DROP FUNCTION {name}()")


async def neon(client: httpx.AsyncClient, key: str, sql: str) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps({"query": sql}).encode(),
        headers={**headers(key), "Content-Type": "text/plain;charset=UTF-8"},
    )


async def test_a_sql_request_does_not_plan_another_clients_function_literals(
    behind: httpx.AsyncClient,  # noqa: F811
    dated: str,
) -> None:
    attack = await neon(behind, "read", f"SELECT {dated}() AS d, pg_backend_pid() AS p")
    assert attack.status_code == 200, attack.text
    victim = await query(behind, "admin", f"SELECT {dated}() AS d, pg_backend_pid() AS p")
    assert victim.status_code == 200, victim.text
    # one server connection behind the pooler: the same backend
    assert str(victim.json()["rows"][0][1]) == attack.json()["rows"][0]["p"], victim.text
    assert victim.json()["rows"][0][0] == "2003-04-05", (
        f"another client's /sql request planned this client's function literal: {victim.text}"
    )


async def test_a_plan_made_for_another_client_does_not_answer_sql(
    behind: httpx.AsyncClient,  # noqa: F811
    dated: str,
) -> None:
    first = await query(behind, "admin", f"SELECT {dated}() AS d")
    assert first.status_code == 200 and first.json()["rows"][0][0] == "2003-04-05", first.text
    styled = await neon(behind, "read", f"SELECT {dated}() AS d")
    assert styled.status_code == 200, styled.text
    plain = await neon(behind, "read", "SELECT to_char('03/04/05'::date, 'YYYY-MM-DD') AS d")
    assert styled.json()["rows"] == plain.json()["rows"], (styled.text, plain.text)
