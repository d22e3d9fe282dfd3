"""Twentieth review pass (attacker): writes whose deferred constraint checks still run at a
commit outside every statement timeout, where pass 17 did not look.

Pass 17 made a plain write (INSERT, UPDATE, DELETE, MERGE, a writing CTE, SELECT INTO) run
after `SET CONSTRAINTS ALL IMMEDIATE` in its own unit (app/sql/plain.py IMMEDIATE,
changes_data), in the plain path and the lanes. PostgreSQL ends every statement timeout
before a commit's work (finish_xact_command), so a write whose deferred checks run at the
commit runs on the server until mirrorpool's guard cuts the connection at the deadline plus
its grace. The key is answered 503 outcome-unknown ("may or may not have committed") for a
write the server would have stopped and undone, its connection is ended and opened again,
and the server ran past its time. Still open (parent20 has a DEFERRABLE INITIALLY DEFERRED
foreign key from child20 with no index on the child's column: each deleted parent costs a
scan of the child table at the commit):

- a write made by the database's own code, from a statement the tree does not see as
  changing data, in the plain path: `SELECT del20($1, $2)` (a function whose body deletes),
  `CALL del20p($1, $2)` (a procedure);
- any write in a single-statement transaction (app/sql/transactions.py pipelined: BEGIN,
  limits, statement, COMMIT in one round trip): /v1/query with a `timeout_ms` other than
  the default (with the default it is the plain path, which holds), and
  POST /sql (its writes take the transaction path, ended once their answers fit): a plain
  `DELETE FROM parent20 WHERE id BETWEEN $1 AND $2` is enough, no code of the database's own.

/v1/transaction holds: its COMMIT is cancelled at the deadline plus the grace, 504, undone.
The spellings run side by side (each on its own rows), so the file takes one deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, query, schema_seen, transaction
from tests.conftest import as_owner

TIMEOUT_MS = 500
SLICE = 600  # parents each spelling deletes: seconds of checks at its commit


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(
        pair,
        "DROP TABLE IF EXISTS child20, parent20",
        "CREATE TABLE parent20 (id int PRIMARY KEY)",
        "CREATE TABLE child20 (parent int REFERENCES parent20 DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO parent20 SELECT g FROM generate_series(1, 4000) g",
        "INSERT INTO child20 SELECT 4000 FROM generate_series(1, 100000)",
        "ANALYZE parent20",
        "ANALYZE child20",
        "CREATE OR REPLACE FUNCTION public.del20(a int, b int) RETURNS bigint LANGUAGE sql AS"
        " $$ WITH d AS (DELETE FROM parent20 WHERE id BETWEEN a AND b RETURNING 1)"
        " SELECT count(*) FROM d $$",
        "CREATE OR REPLACE PROCEDURE public.del20p(a int, b int) LANGUAGE sql AS"
        " $$ DELETE FROM parent20 WHERE id BETWEEN a AND b $$",
    )
    return {"statement_timeout_ms": TIMEOUT_MS, "pool_max_size": 8}


def parents(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM parent20").fetchone()
    return int(row[0]) if row else 0


DELETE = "DELETE FROM parent20 WHERE id BETWEEN $1::int AND $2::int"
# (name, route, sql, extra body)
SPELLINGS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("select-own-function", "/v1/query", "SELECT del20($1::int, $2::int)", {}),
    ("call-own-procedure", "/v1/query", "CALL del20p($1::int, $2::int)", {}),
    ("delete-with-own-timeout", "/v1/query", DELETE, {"timeout_ms": TIMEOUT_MS + 100}),
    ("delete-on-sql", "/sql", DELETE, {}),
]


async def attempt(
    client: httpx.AsyncClient, n: int, route: str, sql: str, extra: dict[str, Any]
) -> tuple[int, object, float]:
    low, high = n * SLICE + 1, (n + 1) * SLICE
    started = time.monotonic()
    if route == "/sql":
        content = json.dumps({"query": sql, "params": [str(low), str(high)]}).encode()
        sql_headers = {**headers("write"), "Content-Type": "text/plain;charset=UTF-8"}
        r = await client.post("/sql", content=content, headers=sql_headers)
    else:
        body = {"sql": sql, "params": [low, high], **extra}
        r = await client.post(route, json=body, headers=headers("write"))
    took = round(time.monotonic() - started, 2)
    retryable = r.json().get("retryable") if r.status_code >= 400 else None
    if route == "/sql" and r.status_code == 400 and r.json().get("code") == "57014":
        return 504, None, took  # (Neon's protocol answers every database error 400)
    return r.status_code, retryable, took


async def test_deferred_checks_stop_within_the_statement_timeout(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    answers = dict(
        zip(
            [s[0] for s in SPELLINGS],
            await asyncio.gather(
                *(attempt(client, n, s[1], s[2], s[3]) for n, s in enumerate(SPELLINGS))
            ),
            strict=True,
        )
    )
    assert parents(pair) == 4000, answers  # every one undone
    for status, retryable, _ in answers.values():
        # stopped by the server, undone, and not "may have committed"
        assert status == 504 and retryable is not False, answers
    after = await transaction(client, "write", "SELECT count(*) AS n FROM parent20")
    assert after.status_code == 200, after.text


async def test_a_procedure_may_still_commit_inside(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    """CALL runs after SET CONSTRAINTS ALL IMMEDIATE too, in the same implicit transaction:
    a procedure that ends its transaction still may (the plain path sends no BEGIN)."""
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS public.committed20 (a int)",
        "GRANT SELECT, INSERT ON public.committed20 TO PUBLIC",
        "CREATE OR REPLACE PROCEDURE public.commits20() LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO public.committed20 VALUES (1); COMMIT;"
        " INSERT INTO public.committed20 VALUES (2); END $$",
    )
    await schema_seen(client)
    r = await query(client, "write", "CALL commits20()")
    assert r.status_code == 200, r.text
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM public.committed20").fetchone()
    assert row is not None and row[0] >= 2
