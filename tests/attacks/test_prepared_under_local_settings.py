"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Third review pass. mirrorpool prepares a statement text by name on a connection the
second time it runs there (app/sql/pipeline), and shares that prepared statement with
every key that later sends the same text on that connection. PostgreSQL reads a statement's
literals once, when it is prepared: under the TimeZone, array_nulls, transform_null_equals,
xmloption... of that moment, and only a changed search_path makes it read them again. A read
key sends another key's text (pg_stat_activity shows it) in its own READ ONLY transaction
after `SET LOCAL TimeZone` (judged clean: nothing is reset, and a ROLLBACK does not undo a
prepared statement): from then on the other key's statement, prepared under the read key's
settings, answers other instants and other arrays, for as long as the connection lives."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.attacks.conftest import headers, query

VICTIM = (
    "SELECT '2024-01-01 00:00:00'::timestamptz AS t, '{NULL}'::text[] AS a FROM pub WHERE v = $1"
)
EXPECTED = [["2024-01-01T00:00:00+00:00", [None]]]


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


async def test_a_read_key_does_not_change_how_another_keys_statement_reads(
    client: httpx.AsyncClient,
) -> None:
    first = await query(client, "admin", VICTIM, params=["public"])  # its first use
    assert first.json()["rows"] == EXPECTED, first.text
    body = {
        "statements": [
            {"sql": "SET LOCAL TimeZone = 'Asia/Tokyo'"},
            {"sql": "SET LOCAL array_nulls = off"},
            {"sql": VICTIM, "params": ["public"]},  # the second use: prepared here
        ],
        "read_only": True,
    }
    attack = await client.post("/v1/transaction", json=body, headers=headers("read"))
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    for _ in range(2):
        victim = await query(client, "admin", VICTIM, params=["public"])
        assert victim.status_code == 200, victim.text
        assert victim.json()["rows"] == EXPECTED, "another key's settings changed this answer"
