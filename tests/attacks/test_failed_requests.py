"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

A statement's session effect is only recorded once its whole pipelined transaction has
succeeded and been decoded (app/sql/transactions.py pipelined): when a later statement fails, or
an answer cannot be decoded, the connection goes back to the pool without its reset, and
what survives a ROLLBACK (prepared statements replaced from a DO block, a session advisory
lock, the random seed) reaches the next key on that connection."""

from __future__ import annotations

import httpx

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, transaction

VICTIM = "SELECT v FROM pub WHERE id = $1"
# Replaces every statement mirrorpool prepared on the session by one with the same
# parameter types that answers the attacker's value instead.
POISON = (
    "DO $$ DECLARE r record; BEGIN "
    "FOR r IN SELECT name, parameter_types FROM pg_prepared_statements LOOP "
    "EXECUTE format('DEALLOCATE %I', r.name); "
    "IF cardinality(r.parameter_types) = 0 THEN "
    "EXECUTE format('PREPARE %I AS SELECT ''poisoned''::text AS v', r.name); "
    "ELSE EXECUTE format('PREPARE %I(%s) AS SELECT ''poisoned''::text AS v', r.name, "
    "array_to_string(r.parameter_types::text[], ',')); END IF; "
    "END LOOP; END $$"
)


async def warm_victim(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        answer = await query(client, "admin", VICTIM, params=[1])
        assert answer.json()["rows"] == [["public"]], answer.text


async def assert_victim_unharmed(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        answer = await query(client, "admin", VICTIM, params=[1])
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [["public"]], answer.text


async def test_a_failed_transaction_leaves_its_poisoned_prepared_statements(
    client: httpx.AsyncClient,
) -> None:
    await warm_victim(client)
    attack = await transaction(client, "write", POISON, "SELECT 1/0")
    assert attack.status_code == 400, attack.text  # the division by zero
    await assert_victim_unharmed(client)


async def test_an_undecodable_answer_leaves_the_poison_of_a_committed_transaction(
    client: httpx.AsyncClient,
) -> None:
    await warm_victim(client)
    # bytea_output=escape (SET LOCAL: judged clean) makes mirrorpool's hex loader fail on
    # the second statement's answer, after the pipeline has committed; the DO block's
    # effect (close the connection) is never recorded.
    await transaction(
        client, "write", "SET LOCAL bytea_output = 'escape'", "SELECT 'xyz!'::bytea", POISON
    )
    await assert_victim_unharmed(client)


async def test_a_failed_transaction_leaves_a_session_advisory_lock_held(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    attack = await transaction(client, "write", "SELECT pg_advisory_lock(4242)", "SELECT 1/0")
    assert attack.status_code == 400, attack.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, "a session advisory lock outlived its failed request"


async def test_a_failed_own_timeout_query_leaves_a_session_advisory_lock_held(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    # One statement with its own timeout_ms runs pipelined (BEGIN ... COMMIT) too.
    attack = await query(
        client, "write", "SELECT pg_advisory_lock(4343), 1/(SELECT 0)", timeout_ms=5000
    )
    assert attack.status_code == 400, attack.text
    assert advisory_locks(pair) == 0, "a session advisory lock outlived its failed request"


async def test_a_failed_transaction_leaves_the_random_seed_it_set(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    with pair.primary.connect() as conn:  # what random() gives after setseed(0.5)
        conn.execute("SELECT setseed(0.5)")
        seeded = conn.execute("SELECT random(), random()").fetchone()
    attack = await transaction(client, "write", "SELECT setseed(0.5)", "SELECT 1/0")
    assert attack.status_code == 400, attack.text
    victim = await query(client, "admin", "SELECT random(), random()")
    assert tuple(victim.json()["rows"][0]) != seeded, "another key chose this key's random()"
