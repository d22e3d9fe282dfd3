"""Fifteenth review pass (attacker): the parse cache bounds its entries by count and by text
length, not by what a tree's facts hold, and a 16 KB text can hold some 500 KiB of facts.

app/sql/tree.py keeps the trees of up to CACHE_SIZE = 4096 texts of at most
CACHEABLE_LENGTH = 16,384 characters. Pass 12 measured the cache with `SELECT 0,1,1,...`,
whose facts are nothing; pass 14 kept the facts of longer texts out of every cache. But a
text just under the length calls some 1,750 distinct functions, and its Tree's calls,
names, maybe_called and own_call_names (with the verdicts kept on it) hold about 500 KiB:

    {"sql": "SELECT f1_0(),f1_1(),f1_2(),... FROM pg_prepared_statements"}   (16,384 chars)

Each is refused (pg_prepared_statements) before anything reaches PostgreSQL, in some 20 ms;
each distinct one is cached. 4096 of them are about 2 GiB per worker, and one read key grows
the worker by some 25 MiB a second, for every other key it serves.
"""

from __future__ import annotations

import httpx

from app.devdb import LocalPair
from app.sql.text_cache import CACHEABLE_LENGTH
from tests.attacks.test_pass12_parse_cost import READ, served
from tests.attacks.test_pass14_tree_cache_memory import many_calls
from tests.conftest import stop_server


def test_cached_trees_of_many_names_do_not_fill_the_worker(pair: LocalPair) -> None:
    server = served(pair)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {READ}"}
            first = client.post(
                "/v1/query", json={"sql": many_calls(0, CACHEABLE_LENGTH)}, headers=auth
            )
            assert first.status_code == 400, first.text  # refused: nothing reaches PostgreSQL
            before = server.rss_kib()
            for i in range(1, 81):
                sql = many_calls(i, CACHEABLE_LENGTH)
                assert len(sql) <= CACHEABLE_LENGTH
                r = client.post("/v1/query", json={"sql": sql}, headers=auth)
                assert r.status_code == 400, r.text
            growth_mib = (server.rss_kib() - before) / 1024
        assert server.proc.poll() is None
        assert growth_mib < 20, (
            f"80 refused statements of {CACHEABLE_LENGTH} characters, each calling some "
            f"1,750 distinct functions, grew the worker by {growth_mib:.0f} MiB"
        )
    finally:
        stop_server(server)
