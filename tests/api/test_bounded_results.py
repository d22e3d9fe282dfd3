"""Answers that never hold more than they return: /v1/query and /v1/transaction read rows in
chunks, keep max_rows + 1 of them within MIRRORPOOL_MAX_RESPONSE_BYTES, and stop a read over
its limit on the server, on every path (plain, pipelined, multiplexed; PgBouncer's is in
tests/cluster/test_pgbouncer.py).

The statements are big enough that holding them whole shows (a result of hundreds of MB, or
millions of rows that take the server seconds), and small enough that a bounded read of
them takes milliseconds. Each one carries a marker comment, so pg_stat_activity can say
whether the server is still running it once the answer has come.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.conftest import as_owner, serving_ready, settings_for, start_server, stop_server
from tests.waiting import eventually

# Rows a statement below would return whole: the server needs seconds for them. (Called in
# the select list, generate_series hands over each row as it makes it; in FROM it would
# make them all first.)
MANY = 20_000_000
SERIES = f"(SELECT generate_series(1, {MANY}) AS g) AS s"


def marked(sql: str) -> tuple[str, str]:
    """The statement with a marker comment of its own, and the marker."""
    marker = f"bounded_{uuid.uuid4().hex[:12]}"
    return f"/* {marker} */ {sql}", marker


def still_running(pair: LocalPair, marker: str) -> list[str]:
    """The states of the backends running a statement with this marker, other than ours."""
    with pair.primary.connect() as conn:
        rows = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE state = 'active'"
            " AND pid <> pg_backend_pid() AND query LIKE %s",
            [f"%{marker}%"],
        ).fetchall()
    return [row[0] for row in rows]


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_concurrent_huge_results_cut_to_one_row_hold_no_memory(pair: LocalPair) -> None:
    """The attack of issue 14: four requests at once for 200,000 rows of 1 kB (200 MB each)
    with max_rows 1. Each is answered at once with its one row, the process grows by a few
    MB, not by the results, and no backend goes on producing them."""
    server = start_server(pair, MIRRORPOOL_POOL_MAX_SIZE="8")
    try:
        sql, marker = marked("SELECT repeat($1, 1000) AS r FROM generate_series(1, $2) g")
        warm = httpx.post(
            server.url + "/v1/query", json={"sql": sql, "params": ["x", 3]}, timeout=10
        )
        assert warm.json()["row_count"] == 3
        before = server.rss_kib()

        async def one(read_only: bool) -> tuple[float, dict[str, Any]]:
            body = {"sql": sql, "params": ["x", 200_000], "max_rows": 1, "read_only": read_only}
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                started = time.monotonic()
                answer = await post(client, "/v1/query", body)
                return time.monotonic() - started, answer

        async def four() -> list[tuple[float, dict[str, Any]]]:
            # Plain requests and read-only (pipelined in a transaction) ones side by side.
            return list(await asyncio.gather(one(False), one(True), one(False), one(True)))

        answers = asyncio.run(four())
        growth_mib = (server.rss_kib("VmHWM") - before) / 1024
        assert still_running(pair, marker) == []
        for seconds, answer in answers:
            assert answer["rows"] == [["x" * 1000]]
            assert answer["truncated"] is True
            assert seconds < 2, answers
        assert growth_mib < 60, f"the server grew by {growth_mib:.0f} MiB"
        assert server.proc.poll() is None
    finally:
        stop_server(server)


def test_a_value_over_the_response_size_is_cut_and_the_server_stays_up(pair: LocalPair) -> None:
    """One value larger than MIRRORPOOL_MAX_RESPONSE_BYTES: the answer says it was cut (no
    row fits), the process serves the next request, and the memory libpq grew to receive
    the value is given back (its connection is not kept)."""
    server = start_server(pair, MIRRORPOOL_MAX_RESPONSE_BYTES=str(1024 * 1024))
    try:
        small = httpx.post(server.url + "/v1/query", json={"sql": "SELECT 1 AS n"}, timeout=10)
        assert small.json()["rows"] == [[1]]
        before = server.rss_kib()
        sql, marker = marked("SELECT 1 AS n, repeat('x', 64 * 1024 * 1024) AS big")
        response = httpx.post(server.url + "/v1/query", json={"sql": sql}, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["rows"] == []
        assert answer["truncated"] is True
        assert [c["name"] for c in answer["columns"]] == ["n", "big"]
        assert len(response.content) < 1024 * 1024
        assert still_running(pair, marker) == []
        after = httpx.post(server.url + "/v1/query", json={"sql": "SELECT 2 AS n"}, timeout=10)
        assert after.json()["rows"] == [[2]]
        kept_mib = (server.rss_kib() - before) / 1024
        assert kept_mib < 32, f"{kept_mib:.0f} MiB more than before the value"
    finally:
        stop_server(server)


async def test_a_plain_read_over_max_rows_is_stopped_on_the_server(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        sql, marker = marked(f"SELECT g FROM {SERIES}")
        started = time.monotonic()
        answer = await post(client, "/v1/query", {"sql": sql, "max_rows": 3})
        assert time.monotonic() - started < 2
        assert answer["rows"] == [[1], [2], [3]]
        assert answer["row_count"] == 3
        assert answer["truncated"] is True
        assert answer["command"].startswith("SELECT ")
        assert still_running(pair, marker) == []
        # The connection it ran on is fine for the next request (and the cancel hit nothing).
        for _ in range(4):
            again = await post(client, "/v1/query", {"sql": "SELECT 5 AS n"})
            assert again["rows"] == [[5]]


async def test_a_read_only_read_over_max_rows_is_stopped_on_the_server(pair: LocalPair) -> None:
    async with serving_ready(settings_for(pair)) as (_, client):
        sql, marker = marked(f"SELECT g, 'row ' || g FROM {SERIES}")
        body = {"sql": sql, "max_rows": 2, "read_only": True, "row_format": "object"}
        answer = await post(client, "/v1/query", body)
        assert answer["rows"] == [{"g": 1, "?column?": "row 1"}, {"g": 2, "?column?": "row 2"}]
        assert answer["truncated"] is True
        assert still_running(pair, marker) == []
        exact = await post(
            client, "/v1/query", {"sql": "SELECT generate_series(1, 2)", "max_rows": 2}
        )
        assert exact["truncated"] is False


async def test_a_write_over_max_rows_still_does_all_its_work(pair: LocalPair) -> None:
    """Stopping a write would undo it: its rows beyond max_rows are read and dropped, and
    every row is written."""
    table = f"bounded_{uuid.uuid4().hex[:10]}"
    as_owner(pair, f"CREATE TABLE {table} (id int)", f"GRANT ALL ON {table} TO PUBLIC")
    async with serving_ready(settings_for(pair)) as (_, client):
        sql = f"INSERT INTO {table} SELECT g FROM generate_series(1, 50000) g RETURNING id"
        answer = await post(client, "/v1/query", {"sql": sql, "max_rows": 2})
        assert answer["rows"] == [[1], [2]]
        assert answer["truncated"] is True
        assert answer["rows_affected"] == 50000
        assert answer["command"] == "INSERT 0 50000"
        count = await post(client, "/v1/query", {"sql": f"SELECT count(*) FROM {table}"})
        assert count["rows"] == [["50000"]]


async def test_transactions_cut_each_statement_and_keep_their_writes(pair: LocalPair) -> None:
    """/v1/transaction: a big read in the middle is cut and its rows dropped as they come
    (the transaction goes on, and commits); a read-only transaction's last read is stopped
    on the server."""
    table = f"bounded_{uuid.uuid4().hex[:10]}"
    as_owner(pair, f"CREATE TABLE {table} (id int)", f"GRANT ALL ON {table} TO PUBLIC")
    async with serving_ready(settings_for(pair)) as (_, client):
        body = {
            "statements": [
                {"sql": "SELECT g FROM generate_series(1, 100000) g"},
                {"sql": f"INSERT INTO {table} VALUES (7) RETURNING id"},
                {"sql": "SELECT g FROM generate_series(1, 3) g"},
            ],
            "max_rows": 2,
        }
        answer = await post(client, "/v1/transaction", body)
        first, insert, last = answer["results"]
        assert first["rows"] == [[1], [2]]
        assert first["truncated"] is True
        assert first["command"] == "SELECT 100000"
        assert insert["rows"] == [[7]]
        assert insert["truncated"] is False
        assert last["rows"] == [[1], [2]]
        assert last["truncated"] is True
        count = await post(client, "/v1/query", {"sql": f"SELECT count(*) FROM {table}"})
        assert count["rows"] == [["1"]]

        sql, marker = marked(f"SELECT g FROM {SERIES}")
        reads = {
            "statements": [{"sql": "SELECT 1 AS one"}, {"sql": sql}],
            "read_only": True,
            "max_rows": 1,
        }
        started = time.monotonic()
        answer = await post(client, "/v1/transaction", reads)
        assert time.monotonic() - started < 2
        assert [r["rows"] for r in answer["results"]] == [[[1]], [[1]]]
        assert answer["results"][1]["truncated"] is True
        assert still_running(pair, marker) == []
        after = await post(client, "/v1/query", {"sql": "SELECT 3 AS n", "read_only": True})
        assert after["rows"] == [[3]]


async def test_the_response_size_cuts_rows_as_they_are_read(pair: LocalPair) -> None:
    """MIRRORPOOL_MAX_RESPONSE_BYTES cuts the rows of /v1/query and, shared between its
    statements, of /v1/transaction; the read is stopped on the server."""
    settings = settings_for(pair, max_response_bytes=4096)
    async with serving_ready(settings) as (_, client):
        sql, marker = marked(f"SELECT g, repeat('y', 100) FROM {SERIES}")
        response = await client.post("/v1/query", json={"sql": sql})
        assert response.status_code == 200
        assert len(response.content) <= 4096
        answer = response.json()
        assert answer["truncated"] is True
        assert 10 < answer["row_count"] < 40
        assert answer["rows"] == [[g, "y" * 100] for g in range(1, answer["row_count"] + 1)]
        assert still_running(pair, marker) == []

        rows = "SELECT g, repeat('z', 100) FROM generate_series(1, 1000) g"
        body = {"statements": [{"sql": rows}, {"sql": rows}]}
        answer = await post(client, "/v1/transaction", body)
        first, second = answer["results"]
        assert first["truncated"] is True
        assert second["truncated"] is True
        assert first["row_count"] > second["row_count"]
        assert first["row_count"] + second["row_count"] < 40


# (timing: a lane keeps only texts that ran within MIRRORPOOL_MULTIPLEX_QUICK_MS, which a
# busy machine can push past between its two runs)
@pytest.mark.timing
async def test_a_read_over_its_limit_in_a_lane_is_stopped_and_leaves_the_lane(
    pair: LocalPair,
) -> None:
    """A text quick enough for the multiplexing lane that then returns millions of rows:
    cut and stopped there, its neighbours in the batch answered as they should be, and the
    text keeps a connection of its own afterwards."""
    settings = settings_for(pair, pool_max_size=2, pool_max_waiting=1000)
    async with serving_ready(settings) as (_, client):
        sql, marker = marked("SELECT generate_series(1, $1::int) AS g")
        neighbour = "SELECT $1::int AS n"

        async def lane_statements() -> int:
            stats = (await client.get("/pool/stats")).json()
            node = next(n for n in stats["nodes"] if n["name"] == "primary")
            count: int = node["multiplexing"]["statements"]
            return count

        async def into_lane(text: str, params: list[Any]) -> None:
            """Run a text until the lane takes it (it has to run quickly first)."""

            async def taken() -> bool:
                before = await lane_statements()
                await post(client, "/v1/query", {"sql": text, "params": params})
                return await lane_statements() > before

            await eventually(taken, f"the lane to take {text}", timeout=20)

        await into_lane(sql, [2])
        before = await lane_statements()
        started = time.monotonic()
        answer = await post(client, "/v1/query", {"sql": sql, "params": [MANY], "max_rows": 2})
        assert time.monotonic() - started < 2
        assert await lane_statements() == before + 1
        assert answer["rows"] == [[1], [2]]
        assert answer["truncated"] is True
        assert still_running(pair, marker) == []
        # Out of the lane now: it runs on a connection of its own.
        again = await post(client, "/v1/query", {"sql": sql, "params": [2]})
        assert again["rows"] == [[1], [2]]
        assert await lane_statements() == before + 1

        # Another such text, cut in a batch with quick neighbours: each gets its own answer.
        other, marker = marked("SELECT generate_series(1, $1::int) AS g")
        await into_lane(other, [2])
        await into_lane(neighbour, [0])
        answers = await asyncio.gather(
            post(client, "/v1/query", {"sql": other, "params": [MANY], "max_rows": 2}),
            *(post(client, "/v1/query", {"sql": neighbour, "params": [i]}) for i in range(12)),
        )
        assert answers[0]["rows"] == [[1], [2]]
        assert answers[0]["truncated"] is True
        assert [a["rows"] for a in answers[1:]] == [[[i]] for i in range(12)]
        assert still_running(pair, marker) == []


async def test_stopping_a_read_reaches_no_other_statement(pair: LocalPair) -> None:
    """Reads stopped on the server one after another, next to ordinary requests on the same
    small pool: no other request is ever cancelled by a stop meant for another."""
    settings = settings_for(pair, pool_max_size=2, pool_max_waiting=1000)
    async with serving_ready(settings) as (_, client):
        big = "SELECT generate_series(1, $1::int) AS g"

        async def cut(i: int) -> None:
            answer = await post(client, "/v1/query", {"sql": big, "params": [MANY], "max_rows": i})
            assert answer["rows"] == [[g] for g in range(1, i + 1)]
            assert answer["truncated"] is True

        async def small(i: int) -> None:
            answer = await post(
                client, "/v1/query", {"sql": "SELECT g AS s FROM generate_series(1, $1::int) g",
                                      "params": [i % 5], "read_only": i % 2 == 0}
            )  # fmt: skip
            assert answer["row_count"] == i % 5

        await asyncio.gather(*(cut(i) for i in range(1, 9)), *(small(i) for i in range(40)))
