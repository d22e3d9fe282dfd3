"""Tenth review pass (attacker): attacks that were tried and failed, kept so they keep failing.

POST /sql (Neon's protocol) against the session and key rules: several statements in one
"query" are refused; its output styles end with its own transaction (for the next key on the
one shared connection, on /v1/query and on /sql); a read key's batch stays read-only whatever
Neon-Batch-Read-Only says, and a role key's stays its role's; session settings sent through
/sql are refused or reset; the connection-string key is echoed nowhere (errors, metrics); a key
sent only as the connection string's password is counted against its in-flight limit like a
bearer key; PL/pgSQL plans made under the pinned styles do not answer a /sql request; the
gate's loopback and Origin checks with auth disabled.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from app.api import gate
from app.devdb import LocalPair
from tests.attacks.conftest import KEYS, headers, keys_for, query
from tests.conftest import as_owner, serving_ready, settings_for
from tests.waiting import eventually


async def neon(
    client: httpx.AsyncClient, key: str | None, body: Any, **extra: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "text/plain;charset=UTF-8", **extra}
    if key is not None:
        hdrs.update(headers(key))
    return await client.post("/sql", content=content, headers=hdrs)


async def test_several_statements_in_one_query_are_refused(client: httpx.AsyncClient) -> None:
    for sql in ["SELECT 1; SELECT 2", "SELECT 1; DELETE FROM pub", "COMMIT; DELETE FROM pub"]:
        response = await neon(client, "read", {"query": sql})
        assert 400 <= response.status_code < 500, (sql, response.text)
    rows = await query(client, "admin", "SELECT count(*) FROM pub")
    assert rows.json()["rows"] == [["1"]]


async def test_the_output_styles_end_with_the_request(client: httpx.AsyncClient) -> None:
    sql = "SELECT '1 day 2 hours'::interval AS i, current_setting('DateStyle') AS d"
    styled = await neon(client, "write", {"query": sql})
    assert styled.status_code == 200, styled.text
    assert styled.json()["rows"][0]["i"] == "1 day 02:00:00"
    for key in ("read", "write"):
        after = await query(client, key, sql)
        assert after.json()["rows"] == [["P1DT2H", "ISO, YMD"]] or after.json()["rows"][0][0] in (
            "P1DT2H",
            "P1DT2H0M0S",
        ), after.text


async def test_a_read_keys_batch_stays_read_only(client: httpx.AsyncClient) -> None:
    body = {"queries": [{"query": "INSERT INTO pub VALUES (99, 'x')"}]}
    response = await neon(client, "read", body, **{"Neon-Batch-Read-Only": "false"})
    assert response.status_code in (400, 403), response.text
    response = await neon(client, "role2", {"query": "SELECT * FROM secret"})
    assert response.status_code == 400 and response.json()["code"] == "42501", response.text


async def test_session_settings_from_sql_do_not_reach_another_key(
    client: httpx.AsyncClient,
) -> None:
    read = await neon(
        client, "read", {"query": "SELECT set_config('IntervalStyle', 'sql_standard', false)"}
    )
    assert read.status_code in (400, 403), read.text
    wrote = await neon(
        client, "write", {"query": "SELECT set_config('IntervalStyle', 'sql_standard', false)"}
    )
    assert wrote.status_code in (400, 403), wrote.text  # a pinned setting: refused
    wrote = await neon(client, "write", {"query": "SET work_mem = '77MB'"})
    assert wrote.status_code == 200, wrote.text
    after = await query(client, "read", "SELECT current_setting('work_mem') AS s")
    assert after.json()["rows"] != [["77MB"]], after.text
    after = await neon(client, "read", {"query": "SELECT current_setting('IntervalStyle') AS s"})
    assert after.json()["rows"] == [{"s": "postgres"}], after.text
    after = await query(client, "read", "SELECT current_setting('IntervalStyle') AS s")
    assert after.json()["rows"] == [["iso_8601"]], after.text


async def test_the_connection_string_is_not_echoed(client: httpx.AsyncClient) -> None:
    secret = f"postgresql://u:{KEYS['read']}@h/db"
    bad = f"postgresql://u:{KEYS['read']}x@h:notaport/db?x=%zz"
    for value in (bad, secret + "\x7f", "postgresql://u:@h/db", "postgres://[::1"):
        response = await client.post(
            "/sql",
            content=b'{"query": "SELECT 1"}',
            headers={"Neon-Connection-String": value, "Content-Type": "text/plain"},
        )
        assert response.status_code in (200, 401), response.text
        assert KEYS["read"] not in response.text
    response = await client.post(
        "/sql",
        content=b'{"query": "SELECT bad syntax"}',
        headers={"Neon-Connection-String": secret, "Content-Type": "text/plain"},
    )
    assert response.status_code == 400 and KEYS["read"] not in response.text
    metrics = await client.get("/metrics", headers=headers("admin"))
    assert KEYS["read"] not in metrics.text


async def test_a_plan_made_under_the_pinned_styles_does_not_answer_sql(
    pair: LocalPair, client: httpx.AsyncClient
) -> None:
    name = f"span_{uuid.uuid4().hex[:8]}"
    as_owner(
        pair,
        f"CREATE FUNCTION {name}() RETURNS text LANGUAGE plpgsql VOLATILE AS"
        " $$ BEGIN RETURN '1 day 2 hours'::interval::text; END $$",
        f"GRANT EXECUTE ON FUNCTION {name}() TO PUBLIC",
    )
    try:
        first = await query(client, "write", f"SELECT {name}() AS s, pg_backend_pid() AS p")
        assert first.json()["rows"][0][0] == "P1DT2H", first.text
        plain = await client.post(
            "/sql",
            content=json.dumps({"query": "SELECT '1 day 2 hours'::interval::text AS s"}).encode(),
            headers={**headers("read"), "Content-Type": "text/plain"},
        )
        assert plain.json()["rows"] == [{"s": "1 day 02:00:00"}], plain.text
        neon = await client.post(
            "/sql",
            content=json.dumps({"query": f"SELECT {name}() AS s, pg_backend_pid() AS p"}).encode(),
            headers={**headers("write"), "Content-Type": "text/plain"},
        )
        # (a call of the database's own function closes its connection after it, so the
        # plan's backend is gone by now; whichever backend answers, it answers right)
        assert neon.json()["rows"][0]["s"] == "1 day 02:00:00", neon.text
        again = await query(client, "write", f"SELECT {name}() AS s")
        assert again.json()["rows"][0][0] == "P1DT2H", again.text
    finally:
        as_owner(pair, f"DROP FUNCTION {name}()")


async def test_a_connection_string_key_is_counted_in_flight(
    pair: LocalPair, world: dict[str, str]
) -> None:
    values: dict[str, Any] = {
        "auth": "keys",
        "api_keys": keys_for(world["role"]),
        "role_passwords": {world["role"]: world["password"]},
        "max_inflight_per_key": 1,
    }
    lock = 7_310_043
    marker = f"inflight_{uuid.uuid4().hex[:8]}"
    blocker = psycopg.connect(pair.primary.dsn(), autocommit=True)
    blocker.execute("SELECT pg_advisory_lock(%s)", [lock])
    try:
        async with serving_ready(settings_for(pair, **values)) as (app, client):
            held = asyncio.ensure_future(
                client.post(
                    "/sql",
                    content=json.dumps(
                        {"query": f"/* {marker} */ SELECT pg_advisory_xact_lock({lock})"}
                    ).encode(),
                    headers={
                        "Neon-Connection-String": f"postgresql://x:{KEYS['write']}@h/d",
                        "Content-Type": "text/plain",
                    },
                )
            )
            await eventually(lambda: app.state.keyring.inflight["writer"] == 1, "counted")
            second = await neon(client, "write", {"query": "SELECT 1 AS n"})
            assert second.status_code == 429, second.text
            other = await neon(client, "read", {"query": "SELECT 1 AS n"})
            assert other.status_code == 200, other.text
            blocker.execute("SELECT pg_advisory_unlock(%s)", [lock])
            assert (await held).status_code == 200
            assert app.state.keyring.inflight["writer"] == 0
    finally:
        blocker.close()


@pytest.mark.parametrize(
    "host",
    [
        "localhost.",
        "127.0.0.1.nip.io",
        "0.0.0.0",
        "evil.com",
        "localhost.evil.com",
        "",
        "[::ffff:7f00:1]",
    ],
)
def test_non_loopback_hosts_are_not_loopback(host: str) -> None:
    assert not gate.is_loopback(gate.host_name(host))


@pytest.mark.parametrize(
    "origin",
    [
        b"null",
        b"http://evil.com",
        b"http://localhost.evil.com",
        b"http://127.0.0.1.evil.com",
        b"file://",
        b"http://evil.com:8000",
    ],
)
async def test_cross_site_origins_are_refused_with_auth_disabled(
    pair: LocalPair, origin: bytes
) -> None:
    async with serving_ready(settings_for(pair, auth="disabled")) as (_, client):
        response = await client.post(
            "/sql",
            content=b'{"query": "SELECT 1 AS n"}',
            headers={"Origin": origin.decode(), "Content-Type": "text/plain"},
        )
        assert response.status_code == 403, response.text
        evil = await client.post(
            "/sql",
            content=b'{"query": "SELECT 1 AS n"}',
            headers={"Host": "evil.com:8000", "Content-Type": "text/plain"},
        )
        assert evil.status_code == 403, evil.text
