"""Thirteenth review pass (attacker): one key's long statements hold up every other key's.

app/sql/off_loop.py reads statements over OFF_LOOP_CHARS (4,096 characters) in a pool of two
threads shared by all keys, first come first served, with an unbounded queue. Its docstring
says "a key sending long statements slows its own requests, not everyone's", but a key that
sends a few statements of MIRRORPOOL_MAX_SQL_LENGTH (100,000 characters, some 0.5 s each to
read) keeps both threads busy, and another key's statement of 5,000 characters (an INSERT
of a few hundred values, a generated report query), which takes milliseconds to read,
waits behind all of them. With the key's 64 requests in flight that is tens of seconds,
before its own deadline even starts. Nothing reaches PostgreSQL: each flood statement is
refused once read.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from app.api.auth import hash_key
from app.devdb import LocalPair
from tests.conftest import start_server, stop_server

READ = "read-key-of-pass-13-long-statements"
OTHER = "other-key-of-pass-13-long-statements"
KEYS = json.dumps(
    [
        {"id": "reader", "sha256": hash_key(READ), "scopes": ["read"]},
        {"id": "other", "sha256": hash_key(OTHER), "scopes": ["read"]},
    ]
)
FLOOD = 8


def dense(i: int, length: int, tail: str = "") -> str:
    head = f"SELECT {i}"
    return head + ",1" * ((length - len(head) - len(tail)) // 2) + tail


@pytest.mark.timing
def test_one_keys_long_statements_do_not_hold_up_another_keys(pair: LocalPair) -> None:
    server = start_server(pair, MIRRORPOOL_AUTH="keys", MIRRORPOOL_API_KEYS=KEYS)
    try:

        async def attack() -> float:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                auth = {"Authorization": f"Bearer {READ}"}
                other = {"Authorization": f"Bearer {OTHER}"}
                report = {"sql": "SELECT 1 WHERE 0 IN (" + ",".join(["1"] * 2_500) + ")"}
                warm = await client.post("/v1/query", json=report, headers=other)
                assert warm.status_code == 200, warm.text
                long = [dense(i, 100_000, " FROM pg_prepared_statements") for i in range(FLOOD)]
                flood = [
                    asyncio.ensure_future(client.post("/v1/query", json={"sql": s}, headers=auth))
                    for s in long
                ]
                waited = 0.0
                while not all(f.done() for f in flood):
                    started = time.monotonic()
                    victim = await client.post("/v1/query", json=report, headers=other)
                    waited = max(waited, time.monotonic() - started)
                    assert victim.status_code == 200, victim.text
                answers = await asyncio.gather(*flood)
                assert [a.status_code for a in answers] == [400] * FLOOD, answers[0].text
                return waited

        waited = asyncio.run(attack())
        assert waited < 1.0, (
            f"another key's 5,000-character statement waited {waited:.2f} s behind "
            f"{FLOOD} long statements of one key"
        )
    finally:
        stop_server(server)
