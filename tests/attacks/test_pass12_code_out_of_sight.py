"""Twelfth review pass (attacker): database code the tree cannot see (a view's definition, a
trigger, a column default) is judged free of session effects.

app/sql/tree.py says of what runs out of sight (a view's definition, a trigger) that "the
rules built on these facts treat such statements as not provably harmless". They do not:
app/sql/session.py effect() counts SELECT, INSERT, UPDATE, DELETE and MERGE as clean kinds
and judges only the calls written in the statement, so a query of a view that calls a
function of the schema's own, or a write that fires a trigger or fills a default, has
Effect.NONE and its connection goes back to the pool without a reset. Whatever that code
left in the session (here a session advisory lock, as a job-claiming function takes one)
is the next key's. A query of such a view even counts as a pure read (multiplexed lanes,
served by a mirror, retried).
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import advisory_locks, query, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def out_of_sight(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    """The schema's own code, made by its owner while the service runs; the tests start
    once the service has read the catalog again (MIRRORPOOL_SCHEMA_REFRESH_S)."""
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.claim_job(id bigint) RETURNS bool"
        " LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(id) $$",
        "CREATE OR REPLACE VIEW public.claimable AS SELECT id, claim_job(4301) AS claimed FROM pub",
        "CREATE TABLE IF NOT EXISTS public.jobs (id int, claimed bool DEFAULT claim_job(4302))",
        "CREATE OR REPLACE FUNCTION public.claim_on_insert() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM claim_job(4303); RETURN NEW; END $$",
        "CREATE TABLE IF NOT EXISTS public.queue (id int)",
        "DROP TRIGGER IF EXISTS claim ON public.queue",
        "CREATE TRIGGER claim BEFORE INSERT ON public.queue"
        " FOR EACH ROW EXECUTE FUNCTION claim_on_insert()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT * FROM claimable"),
        ("write", "INSERT INTO jobs (id) VALUES (1)"),
        ("write", "INSERT INTO queue VALUES (1)"),
    ],
    ids=["view-read-key", "default", "trigger"],
)
async def test_no_session_lock_outlives_code_out_of_sight(
    client: httpx.AsyncClient, out_of_sight: None, pair: LocalPair, key: str, attack: str
) -> None:
    r = await query(client, key, attack)
    assert r.status_code < 500, r.text
    assert (await query(client, "admin", "SELECT 1")).status_code == 200
    assert advisory_locks(pair) == 0, f"a session lock outlived {attack!r}: {r.text}"
