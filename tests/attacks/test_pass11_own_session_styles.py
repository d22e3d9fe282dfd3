"""Eleventh review pass (attacker): with sessions of mirrorpool's own, POST /sql's DateStyle
against the schema's PL/pgSQL plans, the function called through a view (out of the tree's
sight, so its call costs no DISCARD ALL).

Found (fixed): /sql ran under DateStyle ISO, MDY, and PL/pgSQL keeps a function's plans,
its literals read at parse time, for the backend: a plan made under one order answered
requests of the other (2003-04-05 or 2005-03-04 for one literal, by which came first). /sql
now keeps mirrorpool's YMD order (ISO output is the same in both), so a literal reads the same
to every request, whichever planned it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, query
from tests.conftest import as_owner


@pytest.fixture
def dated(pair: LocalPair) -> Iterator[str]:
    name = f"mp11_dated_{uuid.uuid4().hex[:8]}"
    as_owner(
        pair,
        f"CREATE FUNCTION {name}() RETURNS text LANGUAGE plpgsql STABLE AS $$"
        " BEGIN RETURN to_char('03/04/05'::date, 'YYYY-MM-DD'); END $$",
        f"CREATE VIEW {name}_v AS SELECT {name}() AS d",
        f"GRANT EXECUTE ON FUNCTION {name}() TO PUBLIC",
        f"GRANT SELECT ON {name}_v TO PUBLIC",
    )
    yield name
    as_owner(pair, f"DROP VIEW {name}_v", f"DROP FUNCTION {name}()")


async def neon(client: httpx.AsyncClient, key: str, sql: str) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps({"query": sql}).encode(),
        headers={**headers(key), "Content-Type": "text/plain;charset=UTF-8"},
    )


async def test_a_sql_plan_through_a_view_does_not_answer_another_key(
    client: httpx.AsyncClient, dated: str
) -> None:
    attack = await neon(client, "read", f"SELECT d, pg_backend_pid() AS p FROM {dated}_v")
    assert attack.status_code == 200, attack.text
    victim = await query(client, "admin", f"SELECT d, pg_backend_pid() AS p FROM {dated}_v")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"][0][0] == "2003-04-05", victim.text


async def test_a_pinned_plan_through_a_view_does_not_answer_sql(
    client: httpx.AsyncClient, dated: str
) -> None:
    first = await query(client, "admin", f"SELECT d, pg_backend_pid() AS p FROM {dated}_v")
    assert first.json()["rows"][0][0] == "2003-04-05", first.text
    styled = await neon(client, "read", f"SELECT d, pg_backend_pid() AS p FROM {dated}_v")
    assert styled.json()["rows"][0]["p"] == str(first.json()["rows"][0][1]), styled.text
    # /sql reads literals in mirrorpool's own field order (YMD) too, so a plan made by either
    # answers the other the same: a literal means one date to every request.
    assert styled.json()["rows"][0]["d"] == "2003-04-05", styled.text
