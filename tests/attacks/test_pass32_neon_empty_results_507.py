"""Thirty-second review pass (attacker): POST /sql answered a write 507 "too large" after the
write was committed (fixed: an allowance overdrawn by what wraps the results counts as over
the limits before the COMMIT, app/sql/transactions.py and pgbouncer.py), when what makes
the answer too large is results with no rows: empty
results (a batch of INSERTs with no RETURNING) or a result's field descriptions (a
RETURNING / writable CTE that returns no row but many columns).

Pass 29's fix counts, before a write's COMMIT, each result's wrapping (app/sql/execution.py
Context.keep: RESULT_BYTES off the allowance) and each column's description
(app/sql/pipeline/reading.py Slot._describe: its name and FIELD_BYTES off the allowance).
But those deductions only lower `allowance.bytes`; nothing marks the statement cut. A
statement is cut only in Slot.take, when rows arrive that do not fit (`size >
allowance.bytes`), and app/sql/transactions.py decides between COMMIT and ROLLBACK from
`reply.cut` alone (`end_unless_cut(conn, any(r.cut ...))`). So when no statement after the
allowance ran out has a row, the allowance goes negative unseen, the transaction COMMITs,
and app/api/neon.py `_encode` then finds the answer over MIRRORPOOL_MAX_RESPONSE_BYTES and
raises ResultTooLarge: 507, with the rows in the table. The driver reports a failure; a
retry writes twice.

    write key, MIRRORPOOL_MAX_RESPONSE_BYTES=1024:
      POST /sql {"queries": [{"query": "INSERT INTO w32 VALUES (1)"}, ... 30 of them]}
        -> 507 ("the answer is 2xxx bytes, over the limit")     yet 30 rows committed
      POST /sql {"query": "WITH i AS (INSERT INTO w32 VALUES (1)) SELECT 1 AS "nnn...",
                 ... (10 columns) WHERE false"}
        -> 507                                                    yet the row committed
    write key, any limit (here 100 KB):
      POST /sql {"queries": [{"query": "SELECT repeat('x', <limit - 500>) AS v"},
                             <the writable CTE above>]}
        -> 507 ("the answer is 101469 bytes")                     yet the row committed

(Context.keep takes every statement's RESULT_BYTES off the allowance as the commands are
made, before any row comes; a column's description is taken off when its statement's first
result comes, after the rows before it were counted as fitting: the last case works under
any MIRRORPOOL_MAX_RESPONSE_BYTES.)

Root cause: app/sql/transactions.py (end_later / end_unless_cut) reads only `Slot.cut`; an
allowance overdrawn by Context.keep's RESULT_BYTES or Slot._describe's field bytes sets
no cut.

Safe behaviour: an allowance overdrawn by anything (wrapping, field descriptions, rows)
counts as over the limit before the COMMIT: the write is rolled back and 507 means nothing
was written (or the answer is encoded and measured before the transaction ends).
"""

from __future__ import annotations

import json

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import attacked_on, headers

SETUP = (
    "DROP TABLE IF EXISTS public.w32",
    "CREATE TABLE public.w32 (id int)",
    "GRANT SELECT, INSERT ON public.w32 TO PUBLIC",
)
TEARDOWN = ("DROP TABLE IF EXISTS public.w32",)
LIMIT = 1024  # (the smallest MIRRORPOOL_MAX_RESPONSE_BYTES allowed)
NAME = "n" * 60
COLUMNS = ", ".join(f'{i} AS "{NAME}{i}"' for i in range(10))

BATCH = {"queries": [{"query": f"INSERT INTO w32 VALUES ({i})", "params": []} for i in range(30)]}
NO_ROW = {
    "query": f"WITH i AS (INSERT INTO w32 VALUES (1)) SELECT {COLUMNS} WHERE false",
    "params": [],
}
NO_ROW_BATCH = {"queries": [NO_ROW]}
# Any limit: a result whose row just fits (counted with its wrapping and field), then a
# write whose fields, with no row, overdraw the allowance unseen.
BIG = 100_000
FILLED = {"queries": [{"query": f"SELECT repeat('x', {BIG - 500}) AS v", "params": []}, NO_ROW]}


async def neon(client: httpx.AsyncClient, key: str, body: object) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps(body),
        headers={**headers(key), "Content-Type": "text/plain"},
    )


@pytest.mark.parametrize(
    ("body", "limit"),
    [(BATCH, LIMIT), (NO_ROW, LIMIT), (NO_ROW_BATCH, LIMIT), (FILLED, BIG)],
    ids=["empty-results-batch", "fields-no-row-query", "fields-no-row-batch", "rows-then-empty"],
)
async def test_a_507_from_neon_means_nothing_was_written(
    pair: LocalPair, body: object, limit: int
) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, max_response_bytes=limit) as client:
        r = await neon(client, "write", body)
        if r.status_code == 200:  # (what the answer would be, were it under the limit)
            assert len(r.content) <= limit, len(r.content)
            return
        assert r.status_code == 507, r.text
        r2 = await neon(client, "admin", {"query": "SELECT count(*) AS n FROM w32"})
        assert r2.status_code == 200, r2.text
        written = r2.json()["rows"][0]["n"]
        assert written == "0", (
            f"POST /sql answered 507 ({r.json().get('message')!r}), and the write's"
            f" {written} rows were committed"
        )
