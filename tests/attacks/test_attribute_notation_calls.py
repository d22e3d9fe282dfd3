"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Fourth review pass. PostgreSQL reads `(expr).f` and `alias.f` (attribute notation) as the
call `f(expr)` when `f` is not a field of the value: any function of one argument (or one
plus defaults), whatever the argument's type: `SELECT ('x'::text).upper` is 'X'. pglast's
tree of it holds an A_Indirection (or a ColumnRef) with the name as a String, no FuncCall, so
the call is in neither `calls` nor `names` (app/sql/tree.py): every refusal by function name
(app/sql/refusals.py) is bypassed and the statement is judged clean (Effect.NONE: no reset),
even for a read key:

- `(4242::bigint).pg_advisory_lock`: a read key's session advisory lock outlives its request
  on the shared connection (not even DISCARD ALL runs after it);
- `('SELECT ... FROM pg_prepared_statements'::text).ts_stat`: a read key runs a query given
  as text, and reads the SQL other keys had prepared on the shared connection;
- `(pid).pg_terminate_backend`: a read key ends other keys' requests in flight;
- `(0.25::float8).setseed`: a key chooses the next key's random() on the shared connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query


@pytest.fixture
def overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    # The victim's request and the attacker's side by side where the test needs it.
    return {"mirror_dsn": None, "pool_max_size": 2 if "another" in request.node.name else 1}


async def test_a_read_key_leaves_no_session_advisory_lock(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    attack = await query(client, "read", "SELECT (4242::bigint).pg_advisory_lock")
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a read key's lock outlived its request: {attack.text}"


async def test_a_read_key_does_not_read_the_statements_others_prepared(
    client: httpx.AsyncClient,
) -> None:
    others = "SELECT v FROM pub WHERE id = $1 AND v <> 'admin-only-literal'"
    for _ in range(3):  # prepared by name on the one shared connection
        assert (await query(client, "admin", others, params=[1])).status_code == 200
    attack = await query(
        client,
        "read",
        "SELECT ('SELECT to_tsvector(''simple'', statement) FROM pg_prepared_statements'"
        "::text).ts_stat::text",
    )
    assert "admin-only-literal" not in attack.text, attack.text


async def test_a_read_key_does_not_end_another_keys_request(client: httpx.AsyncClient) -> None:
    victim = asyncio.ensure_future(query(client, "admin", "SELECT pg_sleep(1.5), 'done'"))
    await asyncio.sleep(0.5)  # the victim's statement is running
    await query(
        client,
        "read",
        "SELECT (pid).pg_terminate_backend FROM pg_stat_activity"
        " WHERE usename = current_user AND pid <> pg_backend_pid()",
    )
    answer = await victim
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"][0][1] == "done"


async def test_a_write_key_does_not_seed_the_next_keys_random(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    with pair.primary.connect() as conn:  # what random() gives first after setseed(0.25)
        conn.execute("SELECT setseed(0.25)")
        row = conn.execute("SELECT random()").fetchone()
    assert row is not None
    attack = await query(client, "write", "SELECT (0.25::float8).setseed::text")
    assert attack.status_code < 500, attack.text
    victim = await query(client, "admin", "SELECT random()")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] != [[row[0]]], "another key chose this key's random numbers"
