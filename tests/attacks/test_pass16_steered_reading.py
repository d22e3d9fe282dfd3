"""Sixteenth review pass (attacker): the catalog reading made on a write key's own connection
(app/sql/checkout.py _judge_later -> SchemaWatch.read_on) runs in that session as the
request left it, before it is reset, and what it finds is published for every key.

The reading's queries (app/sql/schema_queries.py) qualify their tables and functions, but
not their types: `'pg_catalog.pg_proc'::regclass`, `oid::text`. A write key may set its
search path for the session (SET without LOCAL is refused to read keys only) and may make
temporary domains, and types are looked up in pg_temp first when the path names it first.
So in one transaction:

    {"statements": [
      {"sql": "SET search_path = pg_temp, pg_catalog"},
      {"sql": "CREATE DOMAIN pg_temp.regclass AS pg_catalog.regtype"},
      {"sql": "CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(1)"},
      {"sql": "DROP TABLE IF EXISTS nothing16"},
      {"sql": "SELECT count(*) FROM public.pub"}]}

the DROP makes the facts UNKNOWN, the SELECT names a relation meanwhile, so its connection
is judged later, by a reading on itself. There `::text` truncates to one character (the
fingerprint no longer matches: a full reading), and `'pg_catalog.pg_proc'::regclass` is the
OID of pg_proc's row *type*, which no pg_depend row carries: CODE_DEPENDENCIES_SQL finds
nothing, and every relation known to run the database's own code only by dependency (a
view whose rule uses an own implicit cast) is published as clean, KNOWN, for everyone, until
the request's own end marks the facts unknown again (app/sql/engine.py _changing): after the
closed connection's replacement has opened (app/cluster/share.py Refills), some ms. A read
key's `SELECT n FROM pub16_lengths` judged in that window leaves the cast function's session
advisory lock on its pooled connection, for the next key: 7 of a read key's reads in a loop
while the write key sent the transaction above 15 times (0 with a temporary table made
instead of the two domains). The steered facts also stay the watch's last_known (what the
lanes go by) and its fingerprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from app.sql.checkout import LATER_WAIT_S
from tests.attacks.conftest import advisory_locks, headers, query, schema_seen, transaction
from tests.conftest import as_owner
from tests.waiting import eventually

STEER = (
    "SET search_path = pg_temp, pg_catalog",
    "CREATE DOMAIN pg_temp.regclass AS pg_catalog.regtype",
    "CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(1)",
    "DROP TABLE IF EXISTS nothing16",
    "SELECT count(*) FROM public.pub",
)


@pytest.fixture
def overrides() -> dict[str, Any]:
    # (a pool of more than one: the watch's own reading need not wait for the steered one's
    # connection, and the steered facts stand until its next, MIRRORPOOL_SCHEMA_REFRESH_S on)
    return {"pool_min_size": 4, "pool_max_size": 4}


@pytest.fixture
async def view_with_cast(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.pub16 (id int PRIMARY KEY, v text)",
        "INSERT INTO public.pub16 VALUES (1, 'one') ON CONFLICT DO NOTHING",
        "CREATE OR REPLACE FUNCTION public.pub16_text(r public.pub16) RETURNS text"
        " LANGUAGE sql AS $$ SELECT (r).v WHERE pg_try_advisory_lock(1616) $$",
        "DROP CAST IF EXISTS (public.pub16 AS text)",
        "CREATE CAST (public.pub16 AS text) WITH FUNCTION public.pub16_text(public.pub16)"
        " AS IMPLICIT",
        "CREATE OR REPLACE VIEW public.pub16_lengths AS SELECT length(p) AS n FROM public.pub16 p",
        "CREATE TABLE IF NOT EXISTS public.pub16_texts (v text)",
        "GRANT SELECT ON public.pub16, public.pub16_lengths TO PUBLIC",
        "GRANT INSERT, UPDATE ON public.pub16_texts TO PUBLIC",
    )
    await schema_seen(client)


async def leaks_while(
    client: httpx.AsyncClient, pair: LocalPair, key: str, statements: tuple[str, ...], times: int
) -> list[int]:
    """The session locks found held after a read key's reads of the view while `key` sends
    `statements` as one transaction `times` times."""
    done = asyncio.Event()
    leaks: list[int] = []

    async def released() -> bool:
        return await asyncio.to_thread(advisory_locks, pair) == 0

    async def read() -> None:
        while not done.is_set():
            r = await query(client, "read", "SELECT n FROM pub16_lengths")
            assert r.status_code == 200, r.text
            # A connection judged later is given back after its answer, in the background
            # (within LATER_WAIT_S): a lock still held past that is a leak.
            try:
                await eventually(released, "the read's connection to be judged", LATER_WAIT_S + 1)
            except AssertionError:
                leaks.append(await asyncio.to_thread(advisory_locks, pair))

    reader = asyncio.create_task(read())
    try:
        for _ in range(times):
            r = await transaction(client, key, *statements)
            assert r.status_code < 500, r.text
    finally:
        done.set()
        await reader
    return leaks


async def test_a_reading_on_a_steered_session_publishes_nothing_less(
    client: httpx.AsyncClient, view_with_cast: None, pair: LocalPair
) -> None:
    # the view is known to run code (by its rule's dependency on the cast): held
    r = await query(client, "read", "SELECT n FROM pub16_lengths")
    assert r.status_code == 200, r.text
    assert advisory_locks(pair) == 0
    r = await transaction(client, "write", *STEER)
    assert r.status_code == 200, r.text
    leaks = await leaks_while(client, pair, "write", STEER, 15)
    assert not leaks, (
        f"{len(leaks)} times a read key's SELECT from a view that runs an own cast left its "
        "session lock on a pooled connection, while a write key steered the catalog "
        "reading made on its own connection"
    )


# The same steering the other way: temporary tables named like the catalog's schemas, and
# `regnamespace` a domain over regclass, so the reading's "not the catalog's schemas" names
# three temporary tables, and every catalog function's name (2,657 of them) is published as
# the database's own: every statement calling one is then closed after, for every key.
EVERYTHING_OWN = (
    "SET search_path = pg_temp, pg_catalog",
    "CREATE TEMP TABLE pg_catalog (a int)",
    "CREATE TEMP TABLE information_schema (a int)",
    "CREATE TEMP TABLE pg_toast (a int)",
    "CREATE DOMAIN pg_temp.regnamespace AS pg_catalog.regclass",
    "CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(1)",
    "DROP TABLE IF EXISTS nothing16",
    "SELECT count(*) FROM public.pub",
)


async def test_a_steered_reading_holds_no_other_key(
    client: httpx.AsyncClient, view_with_cast: None
) -> None:
    done = asyncio.Event()
    worst: list[float] = [0.0]

    async def other_key() -> None:
        while not done.is_set():
            started = time.monotonic()
            r = await query(client, "admin", "SELECT 1")
            assert r.status_code == 200, r.text
            worst[0] = max(worst[0], time.monotonic() - started)

    timer = asyncio.create_task(other_key())
    started = time.monotonic()
    try:
        r = await transaction(client, "write", *EVERYTHING_OWN)
        took = time.monotonic() - started
    finally:
        done.set()
        await timer
    assert r.status_code == 200, r.text
    assert worst[0] < 1.0, (
        f"another key's SELECT 1 took {worst[0]:.1f} s while a write key's transaction "
        f"({took:.1f} s) had the catalog read on its steered session"
    )


# (bounded: while the hole is open the steered reading holds the service for 1.5 minutes
# or more, and this test fails by its timeout)
@pytest.mark.timeout(20)
async def test_a_steered_reading_does_not_make_every_function_the_schemas(
    client: httpx.AsyncClient, view_with_cast: None
) -> None:
    async def own_functions() -> int | None:
        r = await client.get("/pool/stats", headers=headers("admin"))
        assert r.status_code == 200, r.text
        facts = r.json()["schema_code"]
        return int(facts["own_functions"]) if facts["known"] else None

    before = await own_functions()
    assert before is not None
    done = asyncio.Event()
    seen: list[int] = []
    worst = [0.0]

    async def poll() -> None:
        while not done.is_set():
            started = time.monotonic()
            n = await own_functions()
            worst[0] = max(worst[0], time.monotonic() - started)
            if n is not None:
                seen.append(n)
            # An in-process request to /pool/stats never waits on a socket: without a turn
            # of the loop here the poller alone would run, and the transaction never would.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.005)

    poller = asyncio.create_task(poll())
    started = time.monotonic()
    try:
        r = await transaction(client, "write", *EVERYTHING_OWN)
        took = time.monotonic() - started
    finally:
        done.set()
        await poller
    assert r.status_code == 200, r.text
    assert worst[0] < 2.0 and took < 2.0, (
        f"GET /pool/stats took up to {worst[0]:.1f} s while a write key's transaction "
        f"({took:.1f} s) had the catalog read on its steered session"
    )
    assert max(seen, default=before) == before, (
        f"the facts published said {max(seen)} own function names ({before} before): every "
        "catalog function's, so every key's statements close their connections"
    )
