"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Behind PgBouncer (MIRRORPOOL_PGBOUNCER=true) the server sessions are shared with every
other request and never reset: what survives a transaction there reaches the next key on
that server connection. Statements that read the session's sequence values (lastval,
currval) start with DISCARD SEQUENCES only when mirrorpool owns its sessions
(app/sql/transactions.py), so a read key reads the values another key's nextval() just took; and
setseed() and temporary types (CREATE DOMAIN pg_temp...) are not refused there."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import pgbouncer_settings, query, transaction
from tests.conftest import as_owner, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer


@pytest.fixture(scope="module")
def bouncer(pair: LocalPair, work_dir: Path) -> Iterator[LocalPgBouncer]:
    """One server connection behind PgBouncer: every request shares it."""
    with LocalPgBouncer(
        pair, work_dir / f"attack-bouncer-{uuid.uuid4().hex[:6]}", pool_size=1
    ) as b:
        yield b


@pytest.fixture
async def behind(
    pair: LocalPair, bouncer: LocalPgBouncer, world: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    values = pgbouncer_settings(pair, bouncer.dsn("postgres", user=SERVICE), world["role"])
    values["pool_max_size"] = 2
    as_owner(pair, "CREATE SEQUENCE IF NOT EXISTS orders_id_seq")
    async with serving_ready(settings_for(pair, **values)) as (_, client):
        yield client


async def test_a_read_key_does_not_read_another_keys_sequence_values(
    behind: httpx.AsyncClient,
) -> None:
    taken = await query(behind, "admin", "SELECT nextval('orders_id_seq')::text")
    assert taken.status_code == 200, taken.text
    mine = taken.json()["rows"][0][0]
    spied = await query(behind, "read", "SELECT lastval()::text")
    # On a session of its own a read key has no sequence value to read (55000).
    assert spied.json().get("rows") != [[mine]], f"the read key read {mine}: {spied.text}"


async def test_no_key_chooses_another_keys_random_values(behind: httpx.AsyncClient) -> None:
    first = await transaction(behind, "write", "SELECT setseed(0.5)", "SELECT random()")
    if first.status_code == 400:
        return  # refused, as session advisory locks and SET are
    seeded = first.json()["results"][1]["rows"]
    await query(behind, "write", "SELECT setseed(0.5)")
    victim = await query(behind, "admin", "SELECT random()")
    assert victim.json()["rows"] != seeded, "another key chose this key's random()"


async def test_a_temporary_type_does_not_reach_other_clients(behind: httpx.AsyncClient) -> None:
    created = await query(behind, "write", "CREATE DOMAIN pg_temp.text AS pg_catalog.varchar(3)")
    if created.status_code == 400:
        return  # refused, as temporary tables without ON COMMIT DROP are
    answer = await query(behind, "admin", "SELECT v::text FROM pub WHERE id = 1")
    assert answer.json()["rows"] == [["public"]], answer.text
