"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

UPDATE pg_settings is set_config() in disguise: the view's rule (pg_settings_u) runs
`set_config(name, setting, false)` for each row, and PUBLIC may UPDATE it. The tree shows an
UpdateStmt on a relation and no call, so the statement is judged clean (Effect.NONE, no
reset), the pinned settings are not seen being set, and none of extra_float_digits,
bytea_output, search_path, statement_timeout, default_transaction_read_only... is a
reported parameter on PostgreSQL 15 (nothing notices the change on give-back). A write key's
settings then stay on the pooled connection for the next key's requests; and with
standard_conforming_strings turned off this way inside /v1/transaction, the next statement
of the same request is read by the server differently from its parse tree (the first pass's
parser differential, back through another door)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query, transaction


def update(name: str, value: str) -> str:
    return f"UPDATE pg_settings SET setting = '{value}' WHERE name = '{name}'"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


async def test_a_write_key_does_not_round_the_next_keys_floats(
    client: httpx.AsyncClient,
) -> None:
    attack = await query(client, "write", update("extra_float_digits", "-15"))
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    victim = await query(client, "admin", "SELECT 3.14159::float8")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [[3.14159]], "another key's setting rounded this key's floats"


async def test_a_write_key_does_not_change_the_next_keys_search_path(
    client: httpx.AsyncClient,
) -> None:
    attack = await query(client, "write", update("search_path", "pg_catalog"))
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    victim = await query(client, "admin", "SELECT v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]]


async def test_a_write_key_does_not_make_the_next_keys_writes_read_only(
    client: httpx.AsyncClient,
) -> None:
    attack = await query(client, "write", update("default_transaction_read_only", "on"))
    assert attack.status_code < 500, attack.text  # (a refusal is a fix)
    victim = await query(client, "admin", "UPDATE pub SET v = v WHERE id = 1")
    assert victim.status_code == 200, victim.text


def hidden(call: str) -> str:
    """A statement whose tree is `SELECT 'a\\'` and that the server, with
    standard_conforming_strings off, runs with `call`."""
    return "SELECT 'a\\' -- ', " + call + " --'"


async def test_a_write_key_cannot_turn_standard_conforming_strings_off(
    client: httpx.AsyncClient,
) -> None:
    others = "SELECT v FROM pub WHERE id = $1 AND v <> 'admin-only-literal'"
    for _ in range(3):  # prepared by name on the shared connection
        assert (await query(client, "admin", others, params=[1])).status_code == 200
    attack = await transaction(
        client,
        "write",
        update("standard_conforming_strings", "off"),
        hidden("(SELECT string_agg(statement, ' | ') FROM pg_prepared_statements)"),
    )
    assert "admin-only-literal" not in attack.text, attack.text
