"""Tenth review pass (attacker): POST /sql reads a result whole.

/v1/query and /v1/transaction read rows in chunks and keep max_rows + 1 of them within
MIRRORPOOL_MAX_RESPONSE_BYTES (app/sql/pipeline Keep), stopping a read over its limit on
the server. POST /sql (app/api/neon.py) runs with Limits.text_output, for which the engine
sends its statements with `keep=None` (transactions.pipelined, pgbouncer._statement): the pipeline's
"our own command, read whole" branch. The whole result is then buffered in libpq before
text_output.answer() looks at max_rows + 1 of it and neon._encode answers 507.

So any key with the read scope can make the service hold a result of any size (up to its
statement_timeout): a few concurrent requests of a few hundred MB each exhaust the worker's
memory, which every other key shares. The safe behaviour asserted: the process does not grow
by the result, and the server stops producing it.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from app.devdb import LocalPair
from tests.api.test_bounded_results import marked, still_running
from tests.conftest import start_server, stop_server


def test_a_huge_result_on_sql_is_not_held_whole(pair: LocalPair) -> None:
    server = start_server(pair, MIRRORPOOL_POOL_MAX_SIZE="4")
    try:
        sql, marker = marked("SELECT repeat($1, 1000) AS r FROM generate_series(1, $2::int) g")
        warm = httpx.post(
            server.url + "/sql", json={"query": sql, "params": ["x", "3"]}, timeout=10
        )
        assert warm.status_code == 200, warm.text
        before = server.rss_kib()

        async def one() -> tuple[float, httpx.Response]:
            body = {"query": sql, "params": ["x", "200000"]}  # 200 MB of rows
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                started = time.monotonic()
                response = await client.post("/sql", json=body)
                return time.monotonic() - started, response

        async def two() -> list[tuple[float, httpx.Response]]:
            return list(await asyncio.gather(one(), one()))

        answers = asyncio.run(two())
        growth_mib = (server.rss_kib("VmHWM") - before) / 1024
        for _, response in answers:
            assert response.status_code == 507, response.text
        assert still_running(pair, marker) == []
        assert growth_mib < 100, f"the server grew by {growth_mib:.0f} MiB for two 507s"
        assert server.proc.poll() is None
    finally:
        stop_server(server)
