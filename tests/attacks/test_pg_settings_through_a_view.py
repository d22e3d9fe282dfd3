"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Fourth review pass. Writing to pg_settings is refused by the relation the tree shows
written (app/sql/refusals.py: `UPDATE pg_settings` is set_config(name, setting, false) in
disguise, through the view's rule). A temporary view over pg_settings is automatically
updatable, and an UPDATE of it is rewritten into an UPDATE of pg_settings, whose rule then
runs set_config: the tree shows only `UPDATE s`. A write key turns
standard_conforming_strings off this way, in the middle of its own transaction, and the
server then reads the transaction's next statement differently from its parse tree (the
first pass's parser differential): a call the tree never sees reads
pg_prepared_statements, the other keys' SQL on the shared connection. (The view is DDL, so
the session is reset after; the damage is done inside the transaction.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query, transaction


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


def hidden(call: str) -> str:
    """A statement whose tree is `SELECT 'a\\'` and that the server, with
    standard_conforming_strings off, runs with `call`."""
    return "SELECT 'a\\' -- ', " + call + " --'"


async def test_a_write_key_cannot_turn_standard_conforming_strings_off_through_a_view(
    client: httpx.AsyncClient,
) -> None:
    others = "SELECT v FROM pub WHERE id = $1 AND v <> 'admin-only-literal'"
    for _ in range(3):  # prepared by name on the shared connection
        assert (await query(client, "admin", others, params=[1])).status_code == 200
    attack = await transaction(
        client,
        "write",
        "CREATE TEMP VIEW s AS SELECT name, setting FROM pg_catalog.pg_settings",
        "UPDATE s SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        hidden("(SELECT string_agg(statement, ' | ') FROM pg_prepared_statements)"),
    )
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    assert "admin-only-literal" not in attack.text, attack.text
