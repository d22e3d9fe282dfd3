"""Twentieth review pass (attacker): what was tried and held.

- a range type of the database's own whose subtype operator class (subtype_opclass) has a
  comparison function of the database's own, reached with no name of the function, the
  operator or the class: ORDER BY a column of the range type, DISTINCT on it, a range
  literal, range_agg (a multirange), a range of it compared by `<`;
- a write key's DO block that deletes (refused: DO blocks are);
- a write key's COPY FROM STDIN into a table with an ON TRUNCATE trigger of the database's
  own, and a read key's TRUNCATE of it (a write key's TRUNCATE:
  test_pass20_truncate_triggers.py);
- the background judgement (pass 17): a write key's transaction of an empty DROP (the facts
  become unknown) and a call of the database's own code that sets a custom setting and
  takes a session advisory lock, answered before its connection is judged, followed at
  once by the admin key's request and the write key's own next one: neither sees the
  setting or the lock; the same with the DROP and the call as two requests;
- a write key's DELETE with deferred foreign-key checks at its commit on /v1/query/stream
  and the role key's on /v1/transaction (the COMMIT is cancelled at the deadline plus the
  grace: 504 or the stream's error, undone).
Each is followed by another key's request; no session advisory lock, no custom setting is
left, and a read key wrote nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.devdb import SERVICE, LocalPair
from tests.attacks.conftest import advisory_locks, attacked, headers
from tests.attacks.test_pass20_truncate_triggers import TRUNCATE_TABLES
from tests.conftest import as_owner, login_role
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT_MS = 500
OWN = (
    "CREATE OR REPLACE FUNCTION public.own20() RETURNS int LANGUAGE plpgsql AS"
    " $$ BEGIN PERFORM set_config('app.x20', 'evil', false);"
    " PERFORM pg_try_advisory_lock(2020); RETURN 1; END $$"
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    role, password = login_role(pair, "lowpriv")
    as_owner(
        pair,
        OWN,
        "DROP TABLE IF EXISTS child20t, parent20t",
        "CREATE TABLE parent20t (id int PRIMARY KEY)",
        "CREATE TABLE child20t (parent int REFERENCES parent20t DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO parent20t SELECT g FROM generate_series(1, 4000) g",
        "INSERT INTO child20t SELECT 4000 FROM generate_series(1, 100000)",
        "ANALYZE parent20t",
        "ANALYZE child20t",
        "GRANT SELECT, DELETE ON parent20t TO PUBLIC",
        *TRUNCATE_TABLES,
    )
    with pair.primary.connect() as conn:  # (a class needs a superuser: the DBA's, made once)
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.cmp20(a text, b text) RETURNS int4"
            " LANGUAGE plpgsql IMMUTABLE AS"
            f" $$ BEGIN IF session_user = '{SERVICE}' THEN PERFORM pg_try_advisory_lock(2020);"
            " END IF; RETURN bttextcmp(a, b); END $$"
        )
        conn.execute(
            "DO $$ BEGIN CREATE OPERATOR CLASS public.text_ops20 FOR TYPE text"
            " USING btree AS OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=,"
            " OPERATOR 5 >, FUNCTION 1 public.cmp20(text, text);"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.execute(
            "DO $$ BEGIN CREATE TYPE public.range20 AS RANGE"
            " (subtype = text, subtype_opclass = public.text_ops20);"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS public.ranges20 (id int, r public.range20)")
        conn.execute(
            "INSERT INTO public.ranges20 SELECT g, public.range20('a', 'b' || g)"
            " FROM generate_series(1, 3) g WHERE NOT EXISTS (SELECT FROM public.ranges20)"
        )
        conn.execute("GRANT SELECT ON public.ranges20 TO PUBLIC")
    async with attacked(
        pair,
        role,
        password,
        seen=True,
        statement_timeout_ms=TIMEOUT_MS,
    ) as client:
        yield client


Attack = list[tuple[str, dict[str, Any]]]


def one(sql: str, **extra: Any) -> Attack:
    return [("/v1/query", {"sql": sql, **extra})]


def several(*sqls: str) -> Attack:
    return [("/v1/transaction", {"statements": [{"sql": sql} for sql in sqls]})]


CASES: list[tuple[str, str, Attack]] = [
    ("range-subclass-order-by", "read", one("SELECT id FROM ranges20 ORDER BY r")),
    ("range-subclass-distinct", "read", one("SELECT DISTINCT r FROM ranges20")),
    ("range-subclass-literal", "read", one("SELECT '[a,b]'::range20 IS NOT NULL AS made")),
    ("range-subclass-range-agg", "read", one("SELECT range_agg(r) IS NOT NULL FROM ranges20")),
    (
        "range-subclass-less-than",
        "read",
        one("SELECT count(*) FROM ranges20 a, ranges20 b WHERE a.r < b.r"),
    ),
    (
        "do-block-delete-refused",
        "write",
        one("DO $$ BEGIN DELETE FROM parent20t WHERE id <= 2000; END $$"),
    ),
    ("copy-from-stdin-into-trigger-table", "write", one("COPY trunc20 FROM STDIN")),
    ("read-key-truncate-of-trigger-table", "read", one("TRUNCATE trunc20")),
    (
        "judged-later-own-code-after-empty-drop",
        "write",
        several("DROP TABLE IF EXISTS nothing20", "SELECT own20() AS n"),
    ),
    (
        "judged-later-own-code-after-drop-request",
        "write",
        one("DROP TABLE IF EXISTS nothing20") + one("SELECT own20() AS n"),
    ),
]

CLEAN = (
    "SELECT current_setting('app.x20', true) IS NULL"
    " AND current_setting('app.t20', true) IS NULL AS clean"
)


@pytest.mark.parametrize(("key", "attack"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_attacks_that_held(
    served: httpx.AsyncClient, pair: LocalPair, key: str, attack: Attack
) -> None:
    assert advisory_locks(pair) == 0
    count = {"sql": "SELECT count(*)::int FROM parent20t"}
    before = (await served.post("/v1/query", json=count, headers=headers("admin"))).json()
    answers = [
        await served.post(path, content=json.dumps(body), headers={
            **headers(key), "Content-Type": "application/json"})
        for path, body in attack
    ]  # fmt: skip
    assert all(r.status_code < 500 for r in answers), [r.text for r in answers]
    # answered before the connection was judged: another key's and its own next request
    other, own = await asyncio.gather(
        served.post("/v1/query", json={"sql": CLEAN}, headers=headers("admin")),
        served.post("/v1/query", json={"sql": CLEAN}, headers=headers(key)),
    )
    assert other.json()["rows"] == [[True]], other.text
    assert own.json()["rows"] == [[True]], own.text
    # (a connection closed for what its statement ran releases the lock as its backend
    # exits, which under load can lag the close by a moment)
    await eventually(
        lambda: advisory_locks(pair) == 0, f"no session lock to outlive {attack!r}", timeout=1.0
    )
    if key == "read":  # a read key wrote nothing
        rows = await served.post("/v1/query", json=count, headers=headers("admin"))
        assert rows.json()["rows"] == before["rows"], rows.text


async def test_deferred_checks_on_stream_and_transaction_held(
    served: httpx.AsyncClient, pair: LocalPair
) -> None:
    delete = "DELETE FROM parent20t WHERE id BETWEEN $1::int AND $2::int"
    stream, tx = await asyncio.gather(
        served.post(
            "/v1/query/stream",
            json={"sql": delete + " RETURNING id", "params": [1, 2000]},
            headers=headers("write"),
        ),
        served.post(
            "/v1/transaction",
            json={"statements": [{"sql": delete, "params": [2001, 3999]}]},
            headers=headers("role"),  # (the role key: a pool of its own, side by side)
        ),
    )
    if stream.status_code == 200:  # stopped after its head went out: the last event says so
        last = json.loads(stream.text.strip().splitlines()[-1])
        assert last.get("status") == "error" and last["error"]["status"] == 504, last
    else:  # its deferred checks ran inside the statement, before any row
        assert stream.status_code == 504, stream.text
    assert tx.status_code == 504, tx.text
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM parent20t").fetchone()
    assert row is not None and row[0] == 4000
