"""Fourteenth review pass (attacker): the caches keyed by a statement's tree keep the facts of
every long statement, and facts can be as large as the text is long.

Pass 12 made trees keep only their facts (Tree.node is {} for most kinds), and measured its
attack with `SELECT 0,1,1,...`, whose facts are nothing. But the facts of a statement that
names many things hold every name: `SELECT f1_0(), f1_1(), ... FROM pg_prepared_statements`
in 100,000 characters calls some 10,000 functions, and its Tree's calls, names, maybe_called
and own_call_names hold about 1.8 MiB. Statements longer than CACHEABLE_LENGTH are not kept
by the parse cache, yet app/sql/refusals.py refusal(), app/sql/session.py effect() and
changes_schema() and app/sql/transaction_pooling.py session_change() are lru_cache(4096)
keyed by the Tree: each one judged stays, about 7 GiB at the bound. Each such request is
refused (pg_prepared_statements) before anything reaches PostgreSQL and takes some 80 ms, so
one read key grows the worker by some 20 MiB a second, for every other key sharing it.
"""

from __future__ import annotations

import httpx

from app.devdb import LocalPair
from tests.attacks.test_pass12_parse_cost import READ, served
from tests.conftest import stop_server

TAIL = " FROM pg_prepared_statements"


def many_calls(i: int, length: int = 100_000) -> str:
    """A statement of about `length` characters calling that many distinct functions."""
    calls: list[str] = []
    size = len("SELECT ") + len(TAIL)
    while True:
        call = f"f{i}_{len(calls)}()"
        if size + len(call) + 1 > length:
            return "SELECT " + ",".join(calls) + TAIL
        calls.append(call)
        size += len(call) + 1


def test_long_statements_facts_are_not_kept(pair: LocalPair) -> None:
    server = served(pair)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {READ}"}
            # Ten first, so that the allocator's arenas (the event loop's and the two reader
            # threads') have grown to what reading such a statement takes at its peak (its
            # raw tree is some 30 MB): what grows after that is what is kept, some 3 MiB a
            # statement when the facts stay.
            for i in range(10):
                r = client.post("/v1/query", json={"sql": many_calls(i)}, headers=auth)
                assert r.status_code == 400, r.text  # refused: nothing reaches PostgreSQL
            before = server.rss_kib()
            for i in range(10, 30):
                r = client.post("/v1/query", json={"sql": many_calls(i)}, headers=auth)
                assert r.status_code == 400, r.text
            growth_mib = (server.rss_kib() - before) / 1024
        assert server.proc.poll() is None
        assert growth_mib < 20, (
            f"20 refused statements of 100,000 characters, each calling some 10,000 "
            f"functions, grew the worker by {growth_mib:.0f} MiB"
        )
    finally:
        stop_server(server)
