"""Twelfth review pass (attacker): what reading a statement costs the service, and who pays.

app/sql/tree.py keeps every parsed statement of up to CACHEABLE_LENGTH (16,384) characters in
an LRU cache of CACHE_SIZE (4,096) entries, and each entry holds the raw tree (Tree.node,
pglast's JSON as Python dicts). A dense 16 KB statement (`SELECT 0,1,1,1,...`: 8,000 select
targets) is about 8 MiB of dicts, so the cache's bound is some 32 GiB: any key with the read
scope can grow the worker by 8 MiB a request with statements that never even reach the
database (here each one is refused, naming pg_prepared_statements). Every other key shares
that worker.

Statements longer than that are not kept by the parse cache, but the caches keyed by the tree
itself keep them all the same: app/sql/refusals.py refusal() (lru_cache(4096)) holds every
tree it judged, app/sql/session.py effect() and app/sql/transaction_pooling.py
session_change() likewise, so a refused statement of 100,000 characters (`SELECT 0,1,1,...`,
some 50,000 targets) leaves about 50 MiB behind for good: ten such requests, some six
seconds of one key's traffic, hold half a GiB.

And the parse runs on the event loop: a statement of MIRRORPOOL_MAX_SQL_LENGTH (100,000
characters) takes some 0.4-0.7 s of pure Python (orjson's load of libpg_query's 4 MB JSON,
then the walk), during which no other key's request is served at all; a key's in-flight
limit does not help, the loop is one for all keys.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.conftest import LiveServer, start_server, stop_server

READ = "read-key-of-pass-12-parse-cost"
OTHER = "other-key-of-pass-12-parse-cost"
KEYS = json.dumps(
    [
        {"id": "reader", "sha256": hash_key(READ), "scopes": ["read"]},
        {"id": "other", "sha256": hash_key(OTHER), "scopes": ["read"]},
    ]
)


def served(pair: LocalPair) -> LiveServer:
    return start_server(pair, MIRRORPOOL_AUTH="keys", MIRRORPOOL_API_KEYS=KEYS)


def dense(i: int, length: int, tail: str = "") -> str:
    head = f"SELECT {i}"
    return head + ",1" * ((length - len(head) - len(tail)) // 2) + tail


def test_cached_trees_do_not_grow_the_worker_without_bound(pair: LocalPair) -> None:
    server = served(pair)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {READ}"}
            tail = " FROM pg_prepared_statements"
            first = client.post("/v1/query", json={"sql": dense(0, 16384, tail)}, headers=auth)
            assert first.status_code == 400, first.text  # refused: nothing reaches PostgreSQL
            before = server.rss_kib()
            for i in range(1, 31):
                client.post("/v1/query", json={"sql": dense(i, 16384, tail)}, headers=auth)
            growth_mib = (server.rss_kib() - before) / 1024
        assert server.proc.poll() is None
        assert growth_mib < 100, (
            f"30 refused 16 KB statements grew the worker by {growth_mib:.0f} MiB"
        )
    finally:
        stop_server(server)


def test_long_statements_are_not_kept_by_the_caches_keyed_by_tree(pair: LocalPair) -> None:
    server = served(pair)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {READ}"}
            tail = " FROM pg_prepared_statements"
            first = client.post("/v1/query", json={"sql": dense(0, 100_000, tail)}, headers=auth)
            assert first.status_code == 400, first.text
            before = server.rss_kib()
            for i in range(1, 7):
                client.post("/v1/query", json={"sql": dense(i, 100_000, tail)}, headers=auth)
            growth_mib = (server.rss_kib() - before) / 1024
        assert server.proc.poll() is None
        assert growth_mib < 100, (
            f"6 refused statements of 100,000 characters grew the worker by {growth_mib:.0f} MiB"
        )
    finally:
        stop_server(server)


@pytest.mark.timing
def test_one_keys_long_statements_do_not_stall_another_keys_requests(pair: LocalPair) -> None:
    server = served(pair)
    try:

        async def attack() -> float:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                auth = {"Authorization": f"Bearer {READ}"}
                other = {"Authorization": f"Bearer {OTHER}"}
                warm = await client.post("/v1/query", json={"sql": "SELECT 1"}, headers=other)
                assert warm.status_code == 200, warm.text
                long = [dense(i, 100_000, " FROM pg_prepared_statements") for i in range(4)]
                flood = [
                    asyncio.ensure_future(client.post("/v1/query", json={"sql": s}, headers=auth))
                    for s in long
                ]
                # The other key asks again and again while the flood is being read: its
                # longest wait is what the parses cost it.
                waited = 0.0
                while not all(f.done() for f in flood):
                    started = time.monotonic()
                    victim = await client.post("/v1/query", json={"sql": "SELECT 1"}, headers=other)
                    waited = max(waited, time.monotonic() - started)
                    assert victim.status_code == 200, victim.text
                answers = await asyncio.gather(*flood)
                assert [a.status_code for a in answers] == [400] * 4, answers[0].text
                return waited

        waited = asyncio.run(attack())
        assert waited < 1.0, f"another key's SELECT 1 waited {waited:.2f} s behind the parses"
    finally:
        stop_server(server)
