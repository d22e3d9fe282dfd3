"""Ninth review pass (attacker): a backend's statistics not yet sent are another key's to read.

PostgreSQL (15 and later) keeps each backend's table and function counters pending in the
backend and flushes them to the shared statistics at most once a second, when the backend goes
idle. Until then `pg_stat_xact_user_tables` / `pg_stat_xact_user_functions` (and the
pg_stat_get_xact_* functions under them), which are meant to show "this transaction's"
counts, show the pending ones: those of every transaction the backend ran since its last
flush. DISCARD ALL does not touch them, and the views are plain catalog reads, judged clean
(they even take the lanes).

So on a pooled connection a read key's `SELECT n_tup_ins, n_tup_upd, n_tup_del FROM
pg_stat_xact_user_tables` right after another key's request answers what that request did: in
which tables, how many rows it inserted, updated, deleted, fetched, which functions it called
and how long they took. No grant is needed on the tables (the views list every table). Keys
sharing a login already see each other's *running* statements in pg_stat_activity (README),
but not what finished requests wrote, nor row counts; keys with the same `role` share a role
pool and so the same leak.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query
from tests.conftest import as_owner


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # one connection of the primary serves every key


@pytest.fixture
def table(pair: LocalPair, world: dict[str, str]) -> Iterator[str]:
    name = f"mp9_ledger_{uuid.uuid4().hex[:8]}"
    # (the role may insert, not read: what it learns below is not in its grants)
    as_owner(pair, f"CREATE TABLE {name} (id int)", f"GRANT INSERT ON {name} TO {world['role']}")
    yield name
    as_owner(pair, f"DROP TABLE {name}")


@pytest.mark.parametrize(
    ("writer", "reader"), [("write", "read"), ("role", "role2")], ids=["login", "role-pool"]
)
async def test_a_read_key_does_not_read_what_another_keys_request_wrote(
    client: httpx.AsyncClient, table: str, writer: str, reader: str
) -> None:
    seen: list[int] = []
    for _ in range(3):  # (a flush between the two requests hides it; one comes at most 1/s)
        write = await query(
            client, writer, f"INSERT INTO {table} SELECT g FROM generate_series(1, 37) g"
        )
        assert write.status_code == 200, write.text
        read = await query(
            client,
            reader,
            "SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relname = $1",
            params=[table],
        )
        assert read.status_code in (200, 400, 403), read.text  # (a refusal is a fix)
        if read.status_code == 200:
            seen.extend(int(row[0]) for row in read.json()["rows"])
    assert not any(seen), (
        f"the read key's transaction, which inserted nothing, counts the write key's rows: {seen}"
    )
