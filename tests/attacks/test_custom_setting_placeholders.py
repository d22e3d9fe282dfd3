"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Third review pass. set_config(name, value, true) is judged local and clean, for read keys
too. For a custom setting (a dotted name such as app.tenant, often read by row-level security
policies or views with current_setting('app.tenant', true)) PostgreSQL leaves the setting
defined in the session after the transaction, with the value '' instead of none, and
DISCARD ALL / RESET ALL do not remove it. Every later key on that connection then reads ''
where it read NULL (`current_setting(...)::int` now fails, `IS NULL` tests flip), for as
long as the connection lives."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.attacks.conftest import query

VICTIM = "SELECT current_setting('app.tenant', true) IS NULL AS unset"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}  # every request on the primary's one shared connection


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT set_config('app.tenant', 'attacker', true)",  # judged clean: no reset
        "SELECT set_config('app.tenant', 'attacker', false)",  # reset: DISCARD ALL
    ],
    ids=["local", "session"],
)
async def test_a_key_leaves_no_custom_setting_for_the_next_key(
    client: httpx.AsyncClient, attack: str
) -> None:
    before = await query(client, "admin", VICTIM)
    assert before.json()["rows"] == [[True]], before.text
    key = "read" if "true" in attack else "write"
    assert (await query(client, key, attack)).status_code == 200
    after = await query(client, "admin", VICTIM)
    assert after.status_code == 200, after.text
    assert after.json()["rows"] == [[True]], "another key's custom setting is still defined"
