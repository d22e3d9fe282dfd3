"""Eighth review pass (attacker): the random seed, as a setting.

setseed() is refused behind PgBouncer and closes the connection otherwise (catalog.py
SURVIVES_RESET), and in attribute notation too: DISCARD ALL does not undo it. But PostgreSQL
also has a setting for it, `seed` (guc.c: its assign hook calls setseed() when set
interactively, in any scope, and nothing re-seeds when the transaction ends or on RESET ALL).
`SET LOCAL seed = 0.25` or `set_config('seed', '0.25', true)` is judged local and clean
(app/sql/session.py: Effect.NONE, nothing is reset, not even a DISCARD ALL), and allowed to read
keys and behind PgBouncer: the next key's random() on that connection (or server connection)
is the sequence the attacker chose, its READ ONLY transaction rolled back or not. A write key's
`SET seed` (session-wide) costs a DISCARD ALL, which does not re-seed either (RESET ALL puts
the setting back without calling setseed())."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction
from tests.attacks.test_pgbouncer_sessions import behind, bouncer  # noqa: F401


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # reads too are served by the primary's one connection


SEEDING = [
    ["SET LOCAL seed = 0.25"],
    ["SELECT set_config('seed', '0.25', true)"],
    ["SAVEPOINT s", "SET LOCAL seed = 0.25", "ROLLBACK TO SAVEPOINT s"],
]
# A write key's session-wide forms: they cost a DISCARD ALL, which does not re-seed.
SESSION_SEEDING = [
    ["SET seed = 0.25"],
    ["SELECT set_config('seed', '0.25', false)"],
]


def first_random_after_seed(pair: LocalPair) -> float:
    with pair.primary.connect() as conn:  # what random() gives first after setseed(0.25)
        conn.execute("SELECT setseed(0.25)")
        row = conn.execute("SELECT random()").fetchone()
    assert row is not None
    return float(row[0])


@pytest.mark.parametrize("statements", SEEDING, ids=["set-local", "set-config", "savepoint"])
async def test_a_read_key_does_not_seed_the_next_keys_random(
    client: httpx.AsyncClient, pair: LocalPair, statements: list[str]
) -> None:
    chosen = first_random_after_seed(pair)
    attack = await transaction(client, "read", *statements)
    assert attack.status_code in (200, 400), attack.text  # (a refusal is a fix)
    victim = await query(client, "admin", "SELECT random()")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] != [[chosen]], "a read key chose this key's random numbers"


@pytest.mark.parametrize("statements", SESSION_SEEDING, ids=["set", "set-config"])
async def test_a_write_key_does_not_seed_the_next_keys_random(
    client: httpx.AsyncClient, pair: LocalPair, statements: list[str]
) -> None:
    chosen = first_random_after_seed(pair)
    attack = await transaction(client, "write", *statements)
    assert attack.status_code in (200, 400), attack.text
    victim = await query(client, "admin", "SELECT random()")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] != [[chosen]], "a write key chose this key's random numbers"


@pytest.mark.parametrize("statements", SEEDING[:2], ids=["set-local", "set-config"])
async def test_a_read_key_does_not_seed_the_next_clients_random_behind_pgbouncer(
    behind: httpx.AsyncClient,  # noqa: F811
    pair: LocalPair,
    statements: list[str],
) -> None:
    chosen = first_random_after_seed(pair)
    attack = await transaction(behind, "read", *statements)
    assert attack.status_code in (200, 400), attack.text
    victim = await query(behind, "admin", "SELECT random()")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] != [[chosen]], "a read key chose this client's random numbers"
