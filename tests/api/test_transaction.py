"""POST /v1/transaction: all-or-nothing, the failing statement named, retryable conflicts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from app.devdb import OWNER, LocalPair
from tests.conftest import as_owner, serving_ready, settings_for
from tests.waiting import eventually


@pytest.fixture
async def client(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    async with serving_ready(settings_for(pair, pool_max_size=4)) as (_, c):
        yield c


@pytest.fixture
def table(pair: LocalPair) -> str:
    name = f"tx_{uuid.uuid4().hex[:12]}"
    with pair.primary.connect(user=OWNER) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 'one'), (2, 'two')")
    return name


async def tx(client: httpx.AsyncClient, statements: list[Any], **extra: Any) -> httpx.Response:
    return await client.post("/v1/transaction", json={"statements": statements, **extra})


def count(pair: LocalPair, table: str) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


async def test_statements_commit_together(
    client: httpx.AsyncClient, pair: LocalPair, table: str
) -> None:
    response = await tx(
        client,
        [
            {"sql": f"INSERT INTO {table} VALUES ($1, $2)", "params": [3, "three"]},
            {"sql": f"UPDATE {table} SET v = :v WHERE id = :id", "params": {"v": "uno", "id": 1}},
            {"sql": f"SELECT id, v FROM {table} ORDER BY id"},
        ],
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["command"] for r in results] == ["INSERT 0 1", "UPDATE 1", "SELECT 3"]
    assert results[2]["rows"] == [[1, "uno"], [2, "two"], [3, "three"]]
    assert count(pair, table) == 3


async def test_failure_rolls_back_and_names_the_statement(
    client: httpx.AsyncClient, pair: LocalPair, table: str
) -> None:
    response = await tx(
        client,
        [
            {"sql": f"INSERT INTO {table} VALUES (10, 'ten')"},
            {"sql": f"INSERT INTO {table} VALUES (1, 'duplicate')"},
            {"sql": f"INSERT INTO {table} VALUES (11, 'eleven')"},
        ],
    )
    assert response.status_code == 409
    problem = response.json()
    assert problem["statement_index"] == 1
    assert problem["sqlstate"] == "23505"
    assert count(pair, table) == 2


async def test_bad_parameters_name_the_statement_before_anything_runs(
    client: httpx.AsyncClient, pair: LocalPair, table: str
) -> None:
    response = await tx(
        client,
        [{"sql": f"DELETE FROM {table}"}, {"sql": "SELECT $1, $2", "params": [1]}],
    )
    assert response.status_code == 400
    assert response.json()["statement_index"] == 1
    assert count(pair, table) == 2


async def test_read_only_transaction_refuses_writes(
    client: httpx.AsyncClient, pair: LocalPair, table: str
) -> None:
    response = await tx(
        client, [{"sql": f"SELECT * FROM {table}"}, {"sql": f"DELETE FROM {table}"}], read_only=True
    )
    assert response.status_code == 403
    assert response.json()["statement_index"] == 1
    assert count(pair, table) == 2


async def test_isolation_level_is_applied(client: httpx.AsyncClient) -> None:
    response = await tx(client, [{"sql": "SHOW transaction_isolation"}], isolation="serializable")
    assert response.json()["results"][0]["rows"] == [["serializable"]]


async def test_deferrable_is_applied(client: httpx.AsyncClient) -> None:
    statements = [{"sql": "SHOW transaction_deferrable"}, {"sql": "SHOW transaction_read_only"}]
    response = await tx(
        client, statements, isolation="serializable", read_only=True, deferrable=True
    )
    assert response.status_code == 200, response.text
    assert [r["rows"] for r in response.json()["results"]] == [[["on"]], [["on"]]]
    response = await tx(client, statements[:1])
    assert response.json()["results"][0]["rows"] == [["off"]]


def backend_waits_on_advisory_lock(pair: LocalPair) -> bool:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ).fetchone()
    return bool(row and row[0] > 0)


async def test_serialization_failure_is_409_retryable(
    client: httpx.AsyncClient, pair: LocalPair, table: str
) -> None:
    key = 424242
    gate = pair.primary.connect()
    gate.execute("SELECT pg_advisory_lock(%s)", [key])
    request = asyncio.ensure_future(
        tx(
            client,
            [
                {"sql": f"SELECT sum(id) FROM {table}"},
                {"sql": "SELECT pg_advisory_xact_lock($1)", "params": [key]},
                {"sql": f"INSERT INTO {table} VALUES (100, 'api')"},
            ],
            isolation="serializable",
        )
    )
    # Once the API transaction has its snapshot and waits at the gate, a concurrent
    # serializable transaction reads and writes the same table and commits first.
    await eventually(lambda: backend_waits_on_advisory_lock(pair), "the API transaction to wait")
    with psycopg.connect(pair.primary.dsn()) as other:
        other.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        other.execute(f"SELECT sum(id) FROM {table}")
        other.execute(f"INSERT INTO {table} VALUES (200, 'other')")
        other.commit()
    gate.execute("SELECT pg_advisory_unlock(%s)", [key])
    gate.close()
    response = await request
    assert response.status_code == 409, response.text
    problem = response.json()
    assert problem["sqlstate"] == "40001"
    assert problem["retryable"] is True
    assert count(pair, table) == 3


async def test_deadlock_is_409_retryable(
    client: httpx.AsyncClient, pair: LocalPair, table: str
) -> None:
    other = psycopg.connect(pair.primary.dsn())
    other.execute(f"UPDATE {table} SET v = 'other' WHERE id = 2")
    request = asyncio.ensure_future(
        tx(
            client,
            [
                {"sql": f"UPDATE {table} SET v = 'api' WHERE id = 1"},
                {"sql": f"UPDATE {table} SET v = 'api' WHERE id = 2"},
            ],
        )
    )

    def api_waits_for_row() -> bool:
        with pair.primary.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'UPDATE % WHERE id = 2'"
            ).fetchone()
        return bool(row and row[0] == 1)

    await eventually(api_waits_for_row, "the API transaction to wait for row 2")
    blocker = asyncio.get_running_loop().run_in_executor(
        None, other.execute, f"UPDATE {table} SET v = 'other' WHERE id = 1"
    )
    response = await request
    await blocker
    other.rollback()
    other.close()
    assert response.status_code == 409, response.text
    assert response.json()["sqlstate"] == "40P01"
    assert response.json()["retryable"] is True


async def test_a_value_that_cannot_be_sent_names_its_statement(
    client: httpx.AsyncClient, pair: LocalPair, table: str
) -> None:
    # A NUL byte cannot travel in a text parameter: psycopg refuses it before anything is
    # sent, and the answer names the statement that carried it.
    response = await tx(
        client,
        [
            {"sql": f"INSERT INTO {table} VALUES (10, 'ten')"},
            {"sql": f"INSERT INTO {table} VALUES (11, $1)", "params": ["nul\u0000byte"]},
        ],
    )
    assert response.status_code == 400, response.text
    assert response.json()["statement_index"] == 1
    assert count(pair, table) == 2


RUN_SQL = (
    "CREATE OR REPLACE FUNCTION run_sql(q text) RETURNS int LANGUAGE plpgsql"
    " AS $$ BEGIN EXECUTE q; RETURN 1; END $$"
)


async def test_transactions_survive_their_prepared_statements_being_dropped(
    pair: LocalPair, table: str
) -> None:
    # One connection, so the DEALLOCATE ALL (through a function of the schema's that runs
    # the SQL it is handed: sent directly it is refused) lands where the transactions
    # prepared theirs.
    as_owner(pair, RUN_SQL)
    async with serving_ready(settings_for(pair, pool_max_size=1)) as (_, client):
        statements: list[dict[str, Any]] = [
            {"sql": f"UPDATE {table} SET v = $1 WHERE id = 1", "params": ["uno"]},
            {"sql": f"SELECT v FROM {table} WHERE id = $1", "params": [1]},
        ]
        first = await tx(client, statements)
        assert first.json()["results"][1]["rows"] == [["uno"]]
        dropped = await client.post("/v1/query", json={"sql": "SELECT run_sql('DEALLOCATE ALL')"})
        assert dropped.status_code == 200

        statements[0]["params"] = ["eins"]
        again = await tx(client, statements)

        assert again.status_code == 200, again.text
        assert again.json()["results"][1]["rows"] == [["eins"]]
