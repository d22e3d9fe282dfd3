"""Seventeenth review pass (attacker): what was tried and held.

- the lanes' batch clock (`mirrorpool.lane_batch`, set per batch with writes): read by a read
  key after a write key's lane writes, and set by a write key's own session setting (the
  connection is reset before anyone else gets it): another key always reads the '0' every
  connection starts with;
- a read key's POST /sql pure read setting DateStyle / IntervalStyle local to its statement:
  the next key's answer keeps mirrorpool's styles;
- the prepared-name eviction: a key fills every name of the shared connection twice over
  (300 distinct texts, run twice) between two runs of another key's prepared statement: the
  other key gets its own rows, never another text's;
- a write key's session characteristics and transaction defaults (SET SESSION
  CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE / READ ONLY / DEFERRABLE,
  set_config('default_transaction_read_only' / 'default_transaction_isolation', ..., false),
  RESET SESSION AUTHORIZATION): every other key's next transaction runs with the defaults;
  a read key's SET SESSION CHARACTERISTICS ... READ WRITE (LOCAL or not) is refused;
- more parameters than the protocol carries (65,546, past libpq's 65,535) on /v1/query,
  /v1/transaction, /v1/query/stream and /sql: a 400 naming the limit, the pool unharmed;
- a NUL character in the SQL (after a statement, in a comment, in a literal) to cut the text
  libpq sends short of what the parse tree read: refused with a 400 before anything runs;
- a write key's DDL and maintenance on the schema it does not own (CREATE TABLE / VIEW in
  public, CREATE STATISTICS, COMMENT ON, ALTER TABLE, CREATE INDEX, REINDEX, CLUSTER, REFRESH
  MATERIALIZED VIEW, TRUNCATE, CREATE PUBLICATION, LOAD, SECURITY LABEL): PostgreSQL refuses
  each (the login owns nothing and may create nowhere), and the next key's read is unharmed.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.devdb import LocalPair
from tests.attacks.conftest import headers, query, transaction
from tests.conftest import as_owner
from tests.waiting import eventually

LANE_WRITE = "INSERT INTO notes17 VALUES ($1::text)"


@pytest.fixture
def overrides(pair: LocalPair, world: dict[str, str]) -> dict[str, Any]:
    as_owner(pair, "CREATE TABLE IF NOT EXISTS public.notes17 (v text)")
    return {"multiplex_quick_ms": 50, "multiplex_writes": True}


async def neon(client: httpx.AsyncClient, key: str, sql: str) -> httpx.Response:
    return await client.post(
        "/sql",
        content=json.dumps({"query": sql}).encode(),
        headers={**headers(key), "Content-Type": "text/plain;charset=UTF-8"},
    )


async def lane_statements(client: httpx.AsyncClient) -> int:
    stats = (await client.get("/pool/stats", headers=headers("admin"))).json()
    primary = next(n for n in stats["nodes"] if n["name"] == "primary")
    return int(primary["multiplexing"]["statements"])


async def lane_write(client: httpx.AsyncClient) -> None:
    async def in_lane() -> bool:
        before = await lane_statements(client)
        r = await query(client, "write", LANE_WRITE, params=["x17"])
        assert r.status_code == 200, r.text
        return await lane_statements(client) > before

    await eventually(in_lane, "the write to join the lane", timeout=20)


async def clock_seen(client: httpx.AsyncClient) -> str:
    r = await query(client, "read", "SELECT current_setting('mirrorpool.lane_batch') AS c")
    assert r.status_code == 200, r.text
    return str(r.json()["rows"][0][0])


async def test_the_batch_clock_after_lane_writes(client: httpx.AsyncClient) -> None:
    await lane_write(client)
    assert await clock_seen(client) == "0"


async def test_the_batch_clock_set_by_a_write_keys_session(client: httpx.AsyncClient) -> None:
    r = await query(
        client, "write", "SELECT pg_catalog.set_config('mirrorpool.lane_batch', '-1e15', false)"
    )
    assert r.status_code in (200, 400), r.text
    assert await clock_seen(client) == "0"
    await lane_write(client)


STYLES = {
    "datestyle-sql-dmy": "SELECT pg_catalog.set_config('DateStyle', 'SQL, DMY', true) AS s",
    "intervalstyle-sql-standard": (
        "SELECT pg_catalog.set_config('IntervalStyle', 'sql_standard', true) AS s"
    ),
    "datestyle-german-with-a-date": (
        "SELECT pg_catalog.set_config('DateStyle', 'German', true) AS s, now()::date AS d"
    ),
}


@pytest.mark.parametrize("attack", list(STYLES.values()), ids=list(STYLES))
async def test_sql_styles_do_not_reach_the_next_key(client: httpx.AsyncClient, attack: str) -> None:
    styled = "SELECT '2003-04-05'::date::text AS d, '1 day 2:03'::interval::text AS i"
    before = await query(client, "admin", styled)
    assert before.status_code == 200, before.text
    r = await neon(client, "read", attack)
    assert r.status_code in (200, 400), r.text
    for key in ("admin", "write"):
        victim = await query(client, key, styled)
        assert victim.status_code == 200, victim.text
        assert victim.json()["rows"] == before.json()["rows"], victim.text
    sql_victim = await neon(client, "admin", styled)
    assert sql_victim.status_code == 200, sql_victim.text
    expected = [{"d": "2003-04-05", "i": "1 day 02:03:00"}]
    assert sql_victim.json()["rows"] == expected, sql_victim.text


async def test_prepared_names_given_up_do_not_answer_another_key(
    client: httpx.AsyncClient,
) -> None:
    victim = "SELECT v AS victim17 FROM pub WHERE id = $1"
    for _ in range(3):  # prepared by name on its second run
        r = await query(client, "admin", victim, params=[1])
        assert r.status_code == 200 and r.json()["rows"] == [["public"]], r.text
    for _ in range(2):
        for chunk in range(3):
            texts = [f"SELECT {chunk * 100 + i} AS v" for i in range(100)]
            r = await transaction(client, "read", *texts)
            assert r.status_code == 200, r.text
        r = await query(client, "admin", victim, params=[1])
        assert r.status_code == 200 and r.json()["rows"] == [["public"]], r.text


VICTIM_MODE = (
    "SELECT current_setting('transaction_isolation') AS i,"
    " current_setting('transaction_read_only') AS r,"
    " current_setting('transaction_deferrable') AS d"
)
MODES = {
    "session-characteristics-serializable": (
        "write",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ),
    "session-characteristics-read-only": (
        "write",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    ),
    "session-characteristics-deferrable": (
        "write",
        "SET SESSION CHARACTERISTICS AS TRANSACTION DEFERRABLE",
    ),
    "set-config-default-read-only": (
        "write",
        "SELECT set_config('default_transaction_read_only', 'on', false)",
    ),
    "set-config-default-isolation": (
        "write",
        "SELECT set_config('default_transaction_isolation', 'serializable', false)",
    ),
    "reset-session-authorization": ("write", "RESET SESSION AUTHORIZATION"),
    "read-key-session-characteristics-read-write": (
        "read",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ),
    "read-key-local-session-characteristics-read-write": (
        "read",
        "SET LOCAL SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ),
}


@pytest.mark.parametrize("name", list(MODES), ids=list(MODES))
async def test_transaction_modes_do_not_reach_the_next_key(
    client: httpx.AsyncClient, name: str
) -> None:
    key, attack = MODES[name]
    before = {k: await query(client, k, VICTIM_MODE) for k in ("admin", "write", "read")}
    r = await query(client, key, attack)
    if key == "read":
        assert r.status_code == 403, r.text
    else:
        assert r.status_code == 200, r.text
    for k, was in before.items():
        now = await query(client, k, VICTIM_MODE)
        assert now.status_code == 200, now.text
        assert now.json()["rows"] == was.json()["rows"], (k, now.text)
    w = await query(client, "admin", "INSERT INTO notes17 VALUES ('after-mode')")
    assert w.status_code == 200, w.text


TOO_MANY = 65546


@pytest.mark.parametrize("path", ["query", "transaction", "stream", "sql"])
async def test_more_parameters_than_the_protocol_carries(
    client: httpx.AsyncClient, path: str
) -> None:
    sql = f"SELECT ${TOO_MANY}::int AS n"
    params = [1] * TOO_MANY
    if path == "query":
        r = await query(client, "write", sql, params=params)
    elif path == "transaction":
        statements: dict[str, Any] = {"statements": [{"sql": sql, "params": params}]}
        r = await client.post("/v1/transaction", json=statements, headers=headers("write"))
    elif path == "stream":
        body: dict[str, Any] = {"sql": sql, "params": params}
        r = await client.post("/v1/query/stream", json=body, headers=headers("write"))
    else:
        content = json.dumps({"query": sql, "params": ["1"] * TOO_MANY}).encode()
        sql_headers = {**headers("write"), "Content-Type": "text/plain;charset=UTF-8"}
        r = await client.post("/sql", content=content, headers=sql_headers)
    assert r.status_code == 400, r.text
    assert "parameters" in r.json()["detail"], r.text
    v = await query(client, "admin", "SELECT v FROM pub WHERE id = 1")
    assert v.status_code == 200 and v.json()["rows"] == [["public"]], v.text


NULS = {
    "nul-before-a-second-statement": "SELECT 1 AS a\u0000; SELECT lo_create(0)",
    "nul-at-the-end": "SELECT lo_create(0) \u0000",
    "nul-in-a-line-comment": "SELECT 1 AS a -- \u0000\n, lo_create(0)",
    "nul-in-a-block-comment": "SELECT 1 AS a /* \u0000 */ , lo_create(0)",
    "nul-in-a-literal": "SELECT '\u0000' AS a",
}


def large_objects(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("sql", list(NULS.values()), ids=list(NULS))
async def test_a_nul_in_the_sql(client: httpx.AsyncClient, pair: LocalPair, sql: str) -> None:
    before = large_objects(pair)
    r = await query(client, "read", sql)
    assert r.status_code == 400 and "NUL" in r.json()["detail"], r.text
    r = await neon(client, "read", sql)
    assert r.status_code == 400 and "NUL" in r.json()["detail"], r.text
    assert large_objects(pair) == before


NOT_OWNED = {
    "create-table-in-public": "CREATE TABLE public.x17 (a int)",
    "create-view-in-public": "CREATE VIEW public.v17 AS SELECT 1 AS a",
    "create-statistics": "CREATE STATISTICS s17 ON id, v FROM pub",
    "comment-on-table": "COMMENT ON TABLE pub IS 'x'",
    "alter-table-add-column": "ALTER TABLE pub ADD COLUMN z17 int",
    "create-index": "CREATE INDEX ON pub (v)",
    "reindex-table": "REINDEX TABLE pub",
    "cluster": "CLUSTER pub",
    "refresh-materialized-view": "REFRESH MATERIALIZED VIEW pub",
    "truncate": "TRUNCATE pub",
    "create-publication": "CREATE PUBLICATION p17 FOR TABLE pub",
    "load-library": "LOAD 'plpgsql'",
    "security-label": "SECURITY LABEL ON TABLE pub IS 'x'",
}


@pytest.mark.parametrize("sql", list(NOT_OWNED.values()), ids=list(NOT_OWNED))
async def test_a_write_keys_ddl_on_what_it_does_not_own(
    client: httpx.AsyncClient, sql: str
) -> None:
    r = await query(client, "write", sql)
    assert r.status_code in (400, 403), r.text
    v = await query(client, "admin", "SELECT v FROM pub WHERE id = 1")
    assert v.status_code == 200 and v.json()["rows"] == [["public"]], v.text
