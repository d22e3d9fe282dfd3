"""Fifteenth review pass (attacker): a read key takes every prepared name of a connection,
and no other key's statement is prepared there again for the connection's life.

app/sql/pipeline/sending.py: a text is prepared by name on a connection the second time it
runs there, up to MAX_PREPARED (256) names per connection, and a name is never given up but
by a reset (DISCARD ALL) or a new connection (MIRRORPOOL_POOL_MAX_LIFETIME, an hour). The
names are the connection's, shared by every key that gets it. So a read key sends 300
distinct one-row texts twice, in six requests (100 statements each):

    {"statements": [{"sql": "SELECT 0 AS n"}, {"sql": "SELECT 1 AS n"}, ...]}   (x 2)

and every later statement of every other key on that connection is parsed and planned
anew each time it runs: the server-side prepare the pipeline relies on for its point-select
figures is gone for everyone, with nothing in /pool/stats to show it. The server's own log
(log_statement = all) shows which name each execution used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import query, transaction
from tests.waiting import eventually

VICTIM = "SELECT v AS victim15 FROM pub WHERE id = $1"


def _system(pair: LocalPair, setting: str) -> None:
    with pair.primary.connect() as conn:
        conn.execute(setting)
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def statements_logged(pair: LocalPair) -> Iterator[None]:
    _system(pair, "ALTER SYSTEM SET log_statement = 'all'")
    try:
        yield
    finally:
        _system(pair, "ALTER SYSTEM RESET log_statement")


async def test_one_key_cannot_take_every_prepared_name(
    client: httpx.AsyncClient, pair: LocalPair, statements_logged: None
) -> None:
    async def logging() -> bool:
        r = await query(client, "admin", "SELECT 'logged15' AS marker")
        assert r.status_code == 200, r.text
        return "logged15" in pair.primary.log_path.read_text(errors="replace")

    await eventually(logging, "the service's connection to log its statements", 10)
    for _ in range(2):
        for chunk in range(3):
            texts = [f"SELECT {chunk * 100 + i} AS n" for i in range(100)]
            r = await transaction(client, "read", *texts)
            assert r.status_code == 200, r.text
    for _ in range(4):
        r = await query(client, "admin", VICTIM, params=[1])
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [["public"]], r.text
    log = pair.primary.log_path.read_text(errors="replace")
    runs = re.findall(r"execute (\S+): " + re.escape(VICTIM), log)
    assert len(runs) == 4, runs
    assert any(name.startswith("_mp_") for name in runs), (
        "after a read key's 300 distinct texts another key's statement is never prepared "
        f"on the connection again: {runs}"
    )
