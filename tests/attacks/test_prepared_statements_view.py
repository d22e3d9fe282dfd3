"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

pg_prepared_statements is refused by its name in the tree (app/sql/refusals.py: it lists
the statements mirrorpool prepared on a shared connection, other keys' SQL among them). The
vetted table_to_xml / schema_to_xml (app/sql/catalog.py: stable, so "clean") run
SELECT * FROM the relation named by their argument, a value the tree cannot read: a read
key reads the view all the same."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # reads too are served by the primary's one connection


OTHERS_SQL = "SELECT v FROM pub WHERE id = $1 AND v <> 'admin-only-literal'"


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT table_to_xml('pg_prepared_statements', true, false, '')::text", None),
        ("SELECT table_to_xml($1::regclass, true, false, '')::text", ["pg_prepared_statements"]),
        (
            "SELECT pg_catalog.table_to_xml_and_xmlschema("
            "'pg_catalog.pg_prepared_statements'::regclass, true, false, '')::text",
            None,
        ),
        ("SELECT schema_to_xml('pg_catalog', true, false, '')::text", None),
    ],
)
async def test_no_key_reads_the_statements_others_prepared(
    client: httpx.AsyncClient, sql: str, params: Any
) -> None:
    for _ in range(3):  # prepared by name on the one shared connection
        assert (await query(client, "admin", OTHERS_SQL, params=[1])).status_code == 200
    answer = await query(client, "read", sql, params=params)
    assert answer.status_code in (400, 403) or "admin-only-literal" not in answer.text, (
        "a read key read another key's statement from pg_prepared_statements"
    )
