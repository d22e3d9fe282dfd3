"""Seventh review pass (attacker): attacks that were tried and failed, kept so they keep
failing. Every key shares one pooled connection of the service's login (tests/attacks/
conftest.py), so what an attacker leaves is exactly what the next key would meet."""

from __future__ import annotations

import httpx
import pytest

from tests.attacks.conftest import headers, query, transaction

VICTIM = "SELECT v FROM pub WHERE id = 1"


async def assert_pub_unchanged(client: httpx.AsyncClient) -> None:
    answer = await query(client, "admin", "SELECT id, v FROM pub ORDER BY id")
    assert answer.status_code == 200, answer.text
    assert [1, "public"] in answer.json()["rows"], answer.text
    assert [7, "written-by-reader"] not in answer.json()["rows"], answer.text


# -- read server files, run programs -------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT xpath('/x/text()', '<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>"
        "<x>&e;</x>'::xml)::text AS t",
        'SELECT xmlparse(document \'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        "<x>&e;</x>')::text AS t",
    ],
    ids=["xpath-entity", "xmlparse-entity"],
)
async def test_an_xml_external_entity_reads_no_server_file(
    client: httpx.AsyncClient, sql: str
) -> None:
    answer = await query(client, "read", sql)
    assert "root:" not in answer.text, answer.text
    assert answer.status_code != 500, answer.text


@pytest.mark.parametrize(
    "sql",
    [
        "COPY pub TO '/tmp/mirrorpool-pass7.txt'",
        "COPY pub FROM PROGRAM 'id'",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        "SELECT pg_catalog.pg_read_binary_file('/etc/passwd')",
        "SELECT lo_import('/etc/passwd')",
        "SELECT pg_catalog.pg_current_logfile()",
        "SELECT * FROM pg_hba_file_rules",
        "CREATE EXTENSION dblink",
        "CREATE EXTENSION file_fdw",
        "LOAD 'auto_explain'",
    ],
)
async def test_a_write_key_reads_no_file_and_runs_no_program(
    client: httpx.AsyncClient, sql: str
) -> None:
    answer = await query(client, "write", sql)
    assert 400 <= answer.status_code < 500 or answer.status_code == 502, answer.text
    assert "root:" not in answer.text and "uid=" not in answer.text, answer.text


# -- write with a read key -----------------------------------------------------------------


@pytest.mark.parametrize(
    "statements",
    [
        ["SET TRANSACTION READ WRITE", "INSERT INTO pub VALUES (7, 'written-by-reader')"],
        [
            "SET LOCAL transaction_read_only TO DEFAULT",
            "INSERT INTO pub VALUES (7, 'written-by-reader')",
        ],
        [
            "SELECT set_config('transaction_read_only', 'off', true)",
            "INSERT INTO pub VALUES (7, 'written-by-reader')",
        ],
        ["WITH d AS (INSERT INTO pub VALUES (7, 'written-by-reader') RETURNING *) SELECT * FROM d"],
        ["EXPLAIN (ANALYZE) INSERT INTO pub VALUES (7, 'written-by-reader')"],
        [
            "MERGE INTO pub USING (SELECT 7 AS id) s ON pub.id = s.id "
            "WHEN NOT MATCHED THEN INSERT VALUES (7, 'written-by-reader')"
        ],
        ["DECLARE c CURSOR FOR SELECT * FROM pub FOR UPDATE"],
        ["CREATE TEMP TABLE tt (x int)", "INSERT INTO tt VALUES (1)"],
        ["SELECT pg_catalog.nextval('orders_id_seq')"],
        ["SELECT ('orders_id_seq'::regclass).nextval"],
        ["ANALYZE pub"],
    ],
)
async def test_a_read_key_writes_nothing(client: httpx.AsyncClient, statements: list[str]) -> None:
    answer = await transaction(client, "read", *statements)
    assert answer.status_code != 500, answer.text
    await assert_pub_unchanged(client)
    seq = await query(client, "admin", "SELECT last_value, is_called FROM orders_id_seq")
    assert seq.json()["rows"] == [["1", False]], seq.text


# -- escape a role ---------------------------------------------------------------------------


async def test_a_write_key_cannot_hand_the_service_login_to_a_role_key(
    client: httpx.AsyncClient, world: dict[str, str]
) -> None:
    grant = await query(client, "write", f"GRANT mirrorpool TO {world['role']}")
    assert grant.status_code in (400, 403), grant.text
    for key in ("role", "role2"):
        escape = await transaction(client, key, "SET LOCAL ROLE mirrorpool", "SELECT x FROM secret")
        assert escape.status_code == 403, escape.text
    direct = await query(client, "role", "SELECT currtid2('secret', '(0,1)')")
    assert direct.status_code == 403, direct.text


# -- session state and crashes ----------------------------------------------------------------


async def test_exit_on_error_costs_only_the_attackers_request(client: httpx.AsyncClient) -> None:
    # exit_on_error (any user may SET it) turns the next error into FATAL: the backend goes.
    attack = await transaction(client, "read", "SET LOCAL exit_on_error = on", "SELECT 1/0")
    assert attack.status_code in (400, 503), attack.text
    for _ in range(3):
        victim = await query(client, "admin", VICTIM)
        assert victim.status_code == 200, victim.text
        assert victim.json()["rows"] == [["public"]], victim.text


async def test_a_temporary_table_shadowing_a_type_is_gone_for_the_next_key(
    client: httpx.AsyncClient,
) -> None:
    # A temporary table's row type is a type in pg_temp, searched first for type names.
    made = await query(client, "write", "CREATE TEMP TABLE text (x int)")
    assert made.status_code == 200, made.text
    victim = await query(client, "admin", "SELECT v::text AS v FROM pub WHERE id = 1")
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]], victim.text


async def test_a_detached_temporary_sequence_is_gone_for_the_next_key(
    client: httpx.AsyncClient,
) -> None:
    # (Behind PgBouncer this leaves a temporary view named pub: test_pass7_pgbouncer_detached_
    # temp.py. With sessions of its own, the DDL costs a DISCARD ALL.)
    attack = await transaction(
        client,
        "write",
        "CREATE TEMP TABLE mp_x (id serial) ON COMMIT DROP",
        "ALTER SEQUENCE mp_x_id_seq OWNED BY NONE",
        "CREATE VIEW pub AS SELECT 1 AS id, 'spoofed-by-writer'::text AS v FROM mp_x_id_seq",
    )
    assert attack.status_code == 200, attack.text
    victim = await query(client, "admin", VICTIM)
    assert victim.status_code == 200, victim.text
    assert victim.json()["rows"] == [["public"]], victim.text


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '10000-01-01'::date, '294276-12-31'::timestamp, '4713-01-01 BC'::date",
        "SELECT '24:00:00'::time, '24:00:00+15:59'::timetz, '4713-01-01 00:00 BC'::timestamptz",
        "SELECT ARRAY['(1,1),(0,0)'::box], '[2:3]={1,2}'::int[], ARRAY['NaN'::float4]",
        "SELECT 1e1000::numeric, ROW(1, 'a'), pg_current_snapshot(), '1'::xid8",
        "SELECT currtid2('pg_prepared_statements', '(0,1)')",
        "SELECT 1 AS a, 2 AS a",
    ],
)
async def test_odd_values_answer_without_a_500(client: httpx.AsyncClient, sql: str) -> None:
    for row_format in ("array", "object"):
        answer = await query(client, "read", sql, row_format=row_format)
        assert answer.status_code != 500, answer.text
        streamed = await client.post(
            "/v1/query/stream",
            json={"sql": sql, "row_format": row_format},
            headers=headers("read"),
        )
        assert streamed.status_code != 500, streamed.text
