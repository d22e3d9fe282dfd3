"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

DO blocks and temporary functions are refused, and functions are refused by the name they
are called by (tree.names). But an operator or an aggregate a write key creates in pg_temp
calls an existing catalog function under a name of the key's choosing, or under no name at
all (`a OPERATOR(pg_temp.###) b` is an A_Expr, not a FuncCall): pg_terminate_backend,
pg_cancel_backend, ts_stat (which runs a query given as text) or setseed all run without
their names in the tree. CREATE OPERATOR / CREATE AGGREGATE in pg_temp only cost a reset
(DISCARD ALL), which does not reset the random seed either."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction

OTHERS = "FROM pg_stat_activity WHERE usename = current_user AND pid <> pg_backend_pid()"

ENDING = [
    (
        "CREATE OPERATOR pg_temp.### (FUNCTION = pg_catalog.pg_terminate_backend,"
        " LEFTARG = int, RIGHTARG = bigint)",
        f"SELECT pid OPERATOR(pg_temp.###) 0::bigint {OTHERS}",
    ),
    (
        "CREATE AGGREGATE pg_temp.stop(int) (SFUNC = int4larger, STYPE = int,"
        " FINALFUNC = pg_catalog.pg_cancel_backend)",
        f"SELECT pg_temp.stop(pid) {OTHERS} GROUP BY pid",
    ),
]


@pytest.fixture
def overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    # The victim's request and the attacker's side by side where the test needs it.
    return {"mirror_dsn": None, "pool_max_size": 2 if "another" in request.node.name else 1}


@pytest.mark.parametrize("attack", ENDING, ids=["operator-terminate", "aggregate-cancel"])
async def test_a_write_key_does_not_end_another_keys_request(
    client: httpx.AsyncClient, attack: tuple[str, str]
) -> None:
    victim = asyncio.ensure_future(query(client, "admin", "SELECT pg_sleep(1.5), 'done'"))
    await asyncio.sleep(0.5)  # the victim's statement is running
    await transaction(client, "write", *attack)
    answer = await victim
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"][0][1] == "done"


async def test_a_write_key_does_not_run_sql_text_through_an_operator(
    client: httpx.AsyncClient,
) -> None:
    others = "SELECT v FROM pub WHERE id = $1 AND v <> 'zebrasecret42'"
    for _ in range(3):  # prepared by name on the shared connection
        assert (await query(client, "admin", others, params=[1])).status_code == 200
    attack = await transaction(
        client,
        "write",
        "CREATE OPERATOR pg_temp.@@@ (FUNCTION = pg_catalog.ts_stat, RIGHTARG = text)",
        "SELECT (OPERATOR(pg_temp.@@@) 'SELECT to_tsvector(''simple'', statement)"
        " FROM pg_prepared_statements')::text",
    )
    assert "zebrasecret42" not in attack.text, attack.text


async def test_a_write_key_does_not_seed_the_next_keys_random(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    with pair.primary.connect() as conn:  # what random() gives first after setseed(0.25)
        conn.execute("SELECT setseed(0.25)")
        row = conn.execute("SELECT random()").fetchone()
    assert row is not None
    seeded = row[0]
    attack = await transaction(
        client,
        "write",
        "CREATE OPERATOR pg_temp.%%% (FUNCTION = pg_catalog.setseed, RIGHTARG = float8)",
        "SELECT (OPERATOR(pg_temp.%%%) 0.25::float8)::text",
    )
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    victim = await query(client, "admin", "SELECT random()")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] != [[seeded]], "another key chose this key's random numbers"
