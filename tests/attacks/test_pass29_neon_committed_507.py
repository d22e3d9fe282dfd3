"""Twenty-ninth review pass (attacker): POST /sql answers a write 507 "too large" after the
write was committed. Fixed: before the COMMIT, the size counts the answer as it will be sent
(app/sql/pipeline/reading.py Slot._describe: rows as objects repeat their columns' names,
and each column's description and each result's wrapping are counted too).

POST /sql promises that a result over the row or size limit fails with 507 instead of
arriving cut, and for a write it keeps that promise by ending the transaction only once its
answers are known to fit (app/sql/transactions.py `end_later` and `end_unless_cut`: "a
text-answer one that may write and has a result over the limits is rolled back instead
(507): its answer would be refused after its writes were committed").

Root cause: what "fits" is measured twice, differently. Before the COMMIT, the rows are
counted against MIRRORPOOL_MAX_RESPONSE_BYTES as JSON arrays (app/sql/pipeline/reading.py
Slot.take: `len(orjson.dumps(rows))`, a row is `["1"]`). After the COMMIT, app/api/neon.py
`_encode` builds Neon's answer, whose rows are objects by default (the driver's default
`arrayMode: false`): every row repeats every column's name (`{"a_long_name...":"1"}`), and
the answer carries `fields`. A write whose RETURNING has a long column name fits the first
count and not the second: the COMMIT runs, then `_encode` raises ResultTooLarge, and the
client is told 507. The rows are in the table all the same: the driver (and drizzle,
Prisma) report the write as failed, and a retry writes it twice.

Safe behaviour: the size checked before the COMMIT is the size of the answer as it will be
sent (rows in the request's own mode, with their names), or the answer is encoded before
the transaction ends, and a write whose answer is over the limit is rolled back: a 507 from
POST /sql means nothing was written.
"""

from __future__ import annotations

import json

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import attacked_on, headers

SETUP = (
    "DROP TABLE IF EXISTS public.w29",
    "CREATE TABLE public.w29 (id int PRIMARY KEY)",
)
TEARDOWN = ("DROP TABLE IF EXISTS public.w29",)
NAME = "n" * 60  # (63 is PostgreSQL's longest name)
WRITE = f'INSERT INTO w29 SELECT g FROM generate_series(1, 3000) AS g RETURNING id AS "{NAME}"'
# Rows as the allowance counts them: about 8 bytes each (24 KB); as Neon answers them, about
# 75 (220 KB).
LIMIT = 100_000


async def neon(client: httpx.AsyncClient, key: str, body: object) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps(body),
        headers={**headers(key), "Content-Type": "text/plain"},
    )


@pytest.mark.parametrize(
    "body",
    [
        {"query": WRITE, "params": []},
        {"queries": [{"query": WRITE, "params": []}]},
    ],
    ids=["query", "batch"],
)
async def test_a_507_from_neon_means_nothing_was_written(pair: LocalPair, body: object) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN, max_response_bytes=LIMIT) as client:
        r = await neon(client, "write", body)
        if r.status_code == 200:  # (what the answer would be, were it under the limit)
            assert len(r.content) <= LIMIT, len(r.content)
            return
        assert r.status_code == 507, r.text
        r2 = await neon(client, "admin", {"query": "SELECT count(*) AS n FROM w29"})
        assert r2.status_code == 200, r2.text
        written = r2.json()["rows"][0]["n"]
        assert written == "0", (
            f"POST /sql answered 507 ({r.json().get('message')!r}), and the write's"
            f" {written} rows were committed"
        )


@pytest.mark.parametrize("array_mode", [False, True], ids=["objects", "arrays"])
async def test_a_neon_write_that_fits_is_answered_and_written(
    pair: LocalPair, array_mode: bool
) -> None:
    """The count before the COMMIT is no stricter than it needs to be: 1000 such rows as
    objects (about 75 KB) fit under the 100 KB limit, and are written and answered."""
    write = WRITE.replace("3000", "1000")
    async with attacked_on(pair, SETUP, TEARDOWN, max_response_bytes=LIMIT) as client:
        r = await neon(client, "write", {"query": write, "params": [], "arrayMode": array_mode})
        assert r.status_code == 200, r.text
        assert len(r.content) <= LIMIT and len(r.json()["rows"]) == 1000
        r2 = await neon(client, "admin", {"query": "SELECT count(*) AS n FROM w29"})
        assert r2.json()["rows"][0]["n"] == "1000", r2.text
