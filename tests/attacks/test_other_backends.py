"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

pg_terminate_backend and pg_cancel_backend are refused by name in the statement's tree
(app/sql/refusals.py), yet a write key without a role runs them from a DO block, or from a
function it creates in pg_temp: every key without a role shares the service's login, and
PostgreSQL lets a login end its own backends. The other keys' requests in flight fail."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query, transaction

KILL = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE usename = current_user AND pid <> pg_backend_pid()"
)
CANCEL = KILL.replace("pg_terminate_backend", "pg_cancel_backend")


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pool_max_size": 2}  # the victim's request and the attacker's, side by side


def temp_function(statement: str) -> tuple[str, str]:
    return (
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE plpgsql AS "
        f"$f$ BEGIN PERFORM {statement.removeprefix('SELECT ')}; RETURN 1; END $f$",
        "SELECT pg_temp.f()",
    )


ATTACKS = [
    (f"DO $$ BEGIN PERFORM {KILL.removeprefix('SELECT ')}; END $$",),
    (f"DO $$ BEGIN PERFORM {CANCEL.removeprefix('SELECT ')}; END $$",),
    temp_function(KILL),
]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_write_key_does_not_end_another_keys_request(
    client: httpx.AsyncClient, attack: tuple[str, ...]
) -> None:
    victim = asyncio.ensure_future(query(client, "admin", "SELECT pg_sleep(1.5), 'done'"))
    await asyncio.sleep(0.5)  # the victim's statement is running
    await transaction(client, "write", *attack)
    answer = await victim
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"][0][1] == "done"
