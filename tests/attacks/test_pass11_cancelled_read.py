"""Eleventh review pass (attacker), tried and held: a POST /sql whose client leaves mid-read
(single and batch) is cancelled on the server, and the next request on the one pooled
connection gets its own answer, not the cancel's error or the left request's rows."""

from __future__ import annotations

import json

import httpx
import pytest

from app.devdb import LocalPair
from tests.api.test_bounded_results import marked, still_running
from tests.conftest import start_server, stop_server


@pytest.mark.parametrize("batch", [False, True], ids=["query", "batch"])
def test_a_left_read_does_not_answer_the_next_request(pair: LocalPair, batch: bool) -> None:
    server = start_server(pair, MIRRORPOOL_POOL_MAX_SIZE="1", MIRRORPOOL_POOL_MIN_SIZE="1")
    try:
        for i in range(2):
            sql, marker = marked("SELECT pg_sleep(30), 'left' AS v")
            body = {"queries": [{"query": "SELECT 1"}, {"query": sql}]} if batch else {"query": sql}
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server.url + "/sql", content=json.dumps(body).encode(), timeout=0.5)
            nxt = httpx.post(
                server.url + "/sql",
                content=json.dumps({"query": f"SELECT {i} AS n"}).encode(),
                timeout=10,
            )
            assert nxt.status_code == 200 and nxt.json()["rows"] == [{"n": str(i)}], nxt.text
            assert still_running(pair, marker) == []
    finally:
        stop_server(server)
