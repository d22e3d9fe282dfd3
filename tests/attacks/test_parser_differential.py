"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

mirrorpool reads every statement with pglast, whose scanner always has
standard_conforming_strings on; the server reads it with the session's setting. A request
may turn the setting off for its own transaction (SET LOCAL, judged clean and allowed to
read keys), and the server then reads the next statement differently: in
`'a\\' -- ', f() --'` pglast sees a string and a comment, the server an escaped quote, a
string, and a call to f(). Whatever the call is, the tree never shows it: refusals by
function name and the session's reset are both bypassed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import headers, query, transaction

OFF = "SET LOCAL standard_conforming_strings = off"


def hidden(call: str) -> str:
    """A statement whose tree is `SELECT 'a\\'` and that the server runs with `call`."""
    return "SELECT 'a\\' -- ', " + call + " --'"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


async def test_a_read_key_leaves_no_session_advisory_lock(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    attack = await transaction(client, "read", OFF, hidden("pg_advisory_lock(77)::text"))
    assert attack.status_code < 500, attack.text
    with pair.primary.connect() as conn:
        held = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND a.usename = %s",
            [SERVICE],
        ).fetchone()
    assert held == (0,), "a read key's READ ONLY request left a session advisory lock"


async def test_a_read_key_does_not_read_pg_prepared_statements(
    client: httpx.AsyncClient,
) -> None:
    others = "SELECT v FROM pub WHERE id = $1 AND v <> 'admin-only-literal'"
    for _ in range(3):
        assert (await query(client, "admin", others, params=[1])).status_code == 200
    attack = await transaction(
        client,
        "read",
        OFF,
        hidden("(SELECT string_agg(statement, ' | ') FROM pg_prepared_statements)"),
    )
    assert "admin-only-literal" not in attack.text, attack.text


@pytest.mark.parametrize(
    "off",
    [
        {"sql": OFF},
        # (the setting's name as a value: set_config(..., true) is judged local and clean)
        {"sql": "SELECT set_config($1, 'off', true)", "params": ["standard_conforming_strings"]},
    ],
)
async def test_a_write_key_does_not_change_the_next_keys_search_path(
    client: httpx.AsyncClient, off: dict[str, Any]
) -> None:
    body = {"statements": [off, {"sql": hidden("set_config('search_path', 'pg_catalog', false)")}]}
    attack = await client.post("/v1/transaction", json=body, headers=headers("write"))
    assert attack.status_code < 500, attack.text
    victim = await query(client, "admin", "SELECT v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]]
