"""Eighteenth review pass (attacker): a row-level security policy reads another relation in a
subquery, and that relation runs the database's own code, with nothing of it in the
statement.

A policy is the one stored expression that may hold a subquery (`USING (EXISTS (SELECT FROM
members18v ...))`, the usual membership check). app/sql/schema_queries.py prints the
policy back and app/sql/schema_code.py stored_code_is_clean() judges its calls and names,
not the relations it reads; CODE_DEPENDENCIES_SQL follows the policy's dependencies to the
database's own functions only, and VIEW_EDGES_SQL carries code from relation to relation
along rules only. So guarded18, whose policy reads the view members18v (which calls
public.member18(), of the database's own) or the table members18 (whose own policy calls
it), is judged to run nothing when read or written (and so is a security_invoker view
over it): what the function left in the session (a session
advisory lock, which the READ ONLY transaction's rollback does not undo) is the next key's.
Nothing here needs more than the schema owner's privileges.
"""

from __future__ import annotations

import httpx
import pytest

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import leaves_no_lock, schema_seen
from tests.conftest import as_owner


@pytest.fixture
async def guarded(pair: LocalPair, world: dict[str, str], client: httpx.AsyncClient) -> None:
    as_owner(
        pair,
        "CREATE OR REPLACE FUNCTION public.member18() RETURNS bool LANGUAGE sql AS"
        f" $$ SELECT pg_try_advisory_lock(1823) IS NOT NULL AND session_user = '{SERVICE}' $$",
        "CREATE OR REPLACE VIEW public.members18v AS SELECT public.member18() AS ok",
        "CREATE TABLE IF NOT EXISTS public.members18 (ok bool)",
        "INSERT INTO public.members18 SELECT true WHERE NOT EXISTS (SELECT FROM public.members18)",
        "ALTER TABLE public.members18 ENABLE ROW LEVEL SECURITY",
        "DROP POLICY IF EXISTS member ON public.members18",
        "CREATE POLICY member ON public.members18 USING (public.member18())",
        "CREATE TABLE IF NOT EXISTS public.guarded18 (id int, v text)",
        "INSERT INTO public.guarded18 SELECT 1, 'one' WHERE NOT EXISTS"
        " (SELECT FROM public.guarded18)",
        "ALTER TABLE public.guarded18 ENABLE ROW LEVEL SECURITY",
        "DROP POLICY IF EXISTS by_view ON public.guarded18",
        "CREATE POLICY by_view ON public.guarded18 USING"
        " (EXISTS (SELECT FROM public.members18v m WHERE m.ok))",
        "CREATE TABLE IF NOT EXISTS public.guarded18b (id int, v text)",
        "INSERT INTO public.guarded18b SELECT 1, 'one' WHERE NOT EXISTS"
        " (SELECT FROM public.guarded18b)",
        "ALTER TABLE public.guarded18b ENABLE ROW LEVEL SECURITY",
        "DROP POLICY IF EXISTS by_table ON public.guarded18b",
        "CREATE POLICY by_table ON public.guarded18b USING"
        " (id IN (SELECT 1 FROM public.members18 m WHERE m.ok))",
        "CREATE OR REPLACE VIEW public.guarded18_ids WITH (security_invoker = true) AS"
        " SELECT id FROM public.guarded18",
        "GRANT SELECT ON public.members18v, public.members18, public.guarded18,"
        " public.guarded18b, public.guarded18_ids TO PUBLIC",
        "GRANT UPDATE ON public.guarded18 TO PUBLIC",
        "SELECT pg_advisory_unlock_all()",
    )
    await schema_seen(client)


@pytest.mark.parametrize(
    ("key", "attack"),
    [
        ("read", "SELECT count(*) FROM guarded18"),
        ("read", "SELECT v FROM guarded18b WHERE id = 1"),
        ("read", "SELECT count(*) FROM guarded18_ids"),
        ("write", "UPDATE guarded18 SET v = v WHERE id = 1"),
    ],
    ids=[
        "policy-reads-own-view",
        "policy-reads-table-with-own-policy",
        "invoker-view-over-policy-table",
        "write-key-update",
    ],
)
async def test_no_session_lock_outlives_a_policy_subquery(
    client: httpx.AsyncClient, guarded: None, pair: LocalPair, key: str, attack: str
) -> None:
    await leaves_no_lock(client, pair, key, attack)
