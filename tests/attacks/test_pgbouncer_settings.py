"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Behind PgBouncer (MIRRORPOOL_PGBOUNCER=true) SET without LOCAL and set_config(..., false)
are refused, since nothing may be reset in a server session shared with the pooler's other
clients. UPDATE pg_settings is set_config(name, setting, false) through the view's rule, and
its tree shows neither: the setting stays on the server connection, for every later
transaction of every client of the pooler (search_path is not among the settings mirrorpool
SETs LOCAL in each transaction)."""

from __future__ import annotations

import httpx

from tests.attacks.conftest import query
from tests.attacks.test_pgbouncer_sessions import behind, bouncer  # noqa: F401


async def test_a_write_key_does_not_change_the_next_clients_search_path(
    behind: httpx.AsyncClient,  # noqa: F811
) -> None:
    attack = await query(
        behind, "write", "UPDATE pg_settings SET setting = 'pg_catalog' WHERE name = 'search_path'"
    )
    assert attack.status_code in (200, 400), attack.text
    victim = await query(behind, "admin", "SELECT v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]]
