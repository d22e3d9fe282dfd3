"""Fifteenth review pass (attacker): the cache of result shapes keeps up to 4096 results'
column lists whatever their width, and a read key fills it with the widest results there
are.

app/sql/columns.py TypeNames.of_result(): a result's shape (its node, and each column's name
and type OID) is remembered with its described columns, up to _MAX_SHAPES = 4096 shapes,
then cleared. The bound counts shapes, not columns or bytes. A statement of 100,000
characters (the longest accepted) returns some 1,380 columns with 63-character names:

    {"sql": "SELECT 1 AS \"000001_0000_xxx...\", 1 AS \"000001_0001_xxx...\", ..."}

and each distinct one keeps some 560 KiB (the shape's names and OIDs, and as many Column
objects): 4096 of them are about 2.2 GiB per worker, for every other key it serves. The
statement touches no table and runs in some 20 ms, so one read key grows the worker by some
25 MiB a second; the same statement sent again grows nothing.
"""

from __future__ import annotations

import json

import httpx

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.conftest import start_server, stop_server

READ = "read-key-of-pass-15-result-shapes"
KEYS = json.dumps([{"id": "reader", "sha256": hash_key(READ), "scopes": ["read"]}])
COLUMNS = 1380


def wide(i: int) -> str:
    """A statement of some 99,000 characters returning COLUMNS columns, named after `i`."""
    names = (f'1 AS "{i:06d}_{k:04d}_' + "x" * 51 + '"' for k in range(COLUMNS))
    return "SELECT " + ", ".join(names)


def test_wide_results_do_not_fill_the_worker(pair: LocalPair) -> None:
    server = start_server(pair, MIRRORPOOL_AUTH="keys", MIRRORPOOL_API_KEYS=KEYS)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {READ}"}
            first = client.post("/v1/query", json={"sql": wide(0)}, headers=auth)
            assert first.status_code == 200, first.text[:300]
            assert len(first.json()["columns"]) == COLUMNS
            before = server.rss_kib()
            for i in range(1, 81):
                r = client.post("/v1/query", json={"sql": wide(i)}, headers=auth)
                assert r.status_code == 200, r.text[:300]
            growth_mib = (server.rss_kib() - before) / 1024
        assert server.proc.poll() is None
        assert growth_mib < 20, (
            f"80 distinct results of {COLUMNS} columns grew the worker by {growth_mib:.0f} MiB "
            "(the shape cache keeps each one's columns)"
        )
    finally:
        stop_server(server)
