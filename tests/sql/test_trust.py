"""Attacks by one key on the others, through HTTP against real PostgreSQL, each in several
spellings (quoted and U& identifiers, schema-qualified names, comments, DO blocks, and a
function of the database's own that runs the SQL it is given). After every attack another
key still gets its own results from its prepared statements, the default timeouts, no
shadowing temporary table and no advisory lock left held; a role key never reads what its
role may not; a read key leaves no large object and no notification; no key ends another's
backend.

Every key shares one pooled connection of the service's login (pool_max_size=1), so the
attacker's session is exactly the one the victim's next request gets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from app.api.auth import hash_key
from app.devdb import SERVICE, LocalPair
from tests.conftest import as_owner, login_role, serving_ready, settings_for
from tests.waiting import eventually

KEYS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("read", "write", "admin", "role", "role2")}
# Poisons every statement prepared on the session: each is replaced by one that writes the
# attacker's row (the attack, from inside code the tree cannot read).
POISON = (
    "DECLARE r record; BEGIN FOR r IN SELECT name FROM pg_prepared_statements LOOP "
    "EXECUTE format('DEALLOCATE %I', r.name); "
    "EXECUTE format('PREPARE %I AS INSERT INTO cards VALUES (''stolen'') RETURNING ''x''', "
    "r.name); END LOOP; END"
)


@pytest.fixture
def world(pair: LocalPair) -> dict[str, str]:
    """Tables of the owner's (the service may use them), a login role that may read `pub`
    only, and a function that runs whatever SQL it is handed."""
    role, password = login_role(pair, "lowpriv")
    suffix = uuid.uuid4().hex[:8]
    as_owner(
        pair,
        "CREATE TABLE IF NOT EXISTS pub (id int PRIMARY KEY, v text)",
        "INSERT INTO pub VALUES (1, 'public') ON CONFLICT DO NOTHING",
        "CREATE TABLE IF NOT EXISTS secret (x int)",
        "INSERT INTO secret SELECT 42 WHERE NOT EXISTS (SELECT FROM secret)",
        "CREATE TABLE IF NOT EXISTS cards (n text)",
        "CREATE OR REPLACE FUNCTION run_sql(q text) RETURNS int LANGUAGE plpgsql "
        "AS $$ BEGIN EXECUTE q; RETURN 1; END $$",
        f"GRANT SELECT ON pub TO {role}",
    )
    return {"role": role, "password": password, "suffix": suffix}


@pytest.fixture
async def client(pair: LocalPair, world: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    role = world["role"]
    keys = [
        {"id": "reader", "sha256": hash_key(KEYS["read"]), "scopes": ["read"]},
        {"id": "writer", "sha256": hash_key(KEYS["write"]), "scopes": ["write"]},
        {"id": "admin", "sha256": hash_key(KEYS["admin"]), "scopes": ["write", "admin"]},
        {"id": "limited", "sha256": hash_key(KEYS["role"]), "scopes": ["write"], "role": role},
        {"id": "limited2", "sha256": hash_key(KEYS["role2"]), "scopes": ["read"], "role": role},
    ]
    settings = settings_for(
        pair,
        auth="keys",
        api_keys=keys,
        role_passwords={role: world["password"]},
        pool_min_size=1,
        pool_max_size=1,
        role_pool_max_size=1,
    )
    as_owner(pair, "TRUNCATE cards")
    async with serving_ready(settings) as (_, c):
        yield c


async def query(client: httpx.AsyncClient, key: str, sql: str, **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    return await client.post("/v1/query", json={"sql": sql, **extra}, headers=headers)


async def transaction(client: httpx.AsyncClient, key: str, *sqls: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    body = {"statements": [{"sql": sql} for sql in sqls]}
    return await client.post("/v1/transaction", json=body, headers=headers)


VICTIM = "SELECT v FROM pub WHERE id = $1"


async def warm_victim(client: httpx.AsyncClient) -> None:
    """The victim's statements run often enough to be prepared on the shared session."""
    for _ in range(3):
        answer = await query(client, "admin", VICTIM, params=[1])
        assert answer.json()["rows"] == [["public"]], answer.text
        assert (await query(client, "admin", "SHOW statement_timeout")).status_code == 200


async def assert_victim_unharmed(client: httpx.AsyncClient, pair: LocalPair) -> None:
    """Another key's requests see nothing of the attack."""
    for _ in range(3):  # its prepared statement, more than once
        answer = await query(client, "admin", VICTIM, params=[1])
        assert answer.status_code == 200, answer.text
        assert (answer.json()["rows"], answer.json()["command"]) == ([["public"]], "SELECT 1")
    settings = await transaction(
        client,
        "admin",
        "SHOW statement_timeout",
        "SHOW lock_timeout",
        "SHOW search_path",
        "SELECT current_user::text, session_user::text",
    )
    assert settings.status_code == 200, settings.text
    shown = [r["rows"][0] for r in settings.json()["results"]]
    assert shown == [["30s"], ["5s"], ['"$user", public'], [SERVICE, SERVICE]]
    stolen = await query(client, "admin", "SELECT count(*)::int FROM cards")
    assert stolen.json()["rows"] == [[0]]
    with pair.primary.connect() as conn:  # the harness: every session on the server
        held = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND a.usename = %s",
            [SERVICE],
        ).fetchone()
    assert held == (0,), "an advisory lock outlived its request"


# (key, statement): each tries to poison, shadow or loosen what the next request gets.
POISONING = [
    ("read", "DEALLOCATE ALL"),
    ("write", "/* */ deallocate prepare ALL"),
    ("read", "PREPARE _mp_0 AS SELECT 'evil'"),
    ("read", f"DO $$ {POISON} $$"),
    ("write", f"DO $$ {POISON} $$"),
    ("write", f"do language plpgsql $body$ {POISON} $body$"),
    ("write", f"SELECT run_sql($q$DO $b$ {POISON} $b$$q$)"),
    ("write", f"SELECT public.run_sql($q$DO $b$ {POISON} $b$$q$)"),
    ("read", f"SELECT run_sql($q$DO $b$ {POISON} $b$$q$)"),
]
TIMEOUTS = [
    ("read", "SELECT U&\"set\\005fconfig\"('statement_timeout', '0', false)"),
    ("write", "SELECT U&\"set\\005fconfig\"('statement_timeout', '0', false)"),
    ("write", 'SET "statement_timeout" = 0'),
    ("write", "SET SESSION lock_timeout TO 0"),
    ("write", "SELECT pg_catalog.set_config('statement_timeout', '0', false)"),
    ("write", "SELECT \"set_config\"('search_path', 'pg_catalog', 'off')"),
    ("write", "DO $$ BEGIN PERFORM set_config('statement_timeout', '0', false); END $$"),
    ("write", "SELECT run_sql('SET statement_timeout = 0')"),
    ("read", "SELECT run_sql('SET statement_timeout = 0')"),
]
SHADOWS = [
    ("write", "SELECT 1 AS id, 'evil'::text AS v INTO pg_temp.pub"),
    ("write", "CREATE TEMP TABLE pub AS SELECT 1 AS id, 'evil'::text AS v"),
    ("write", 'CREATE TABLE "pg_temp"."pub" AS SELECT 1 AS id, \'evil\'::text AS v'),
    ("write", "DO $$ BEGIN CREATE TEMP TABLE pub AS SELECT 1 AS id, 'evil'::text AS v; END $$"),
    ("write", "SELECT run_sql('CREATE TEMP TABLE pub AS SELECT 1 AS id, ''evil''::text AS v')"),
    ("read", "SELECT 1 AS id, 'evil'::text AS v INTO TEMP pub"),
]
LOCKS = [
    ("read", "SELECT pg_advisory_lock(4242)"),
    ("write", "SELECT pg_advisory_lock(4242)"),
    ("write", 'SELECT "pg_advisory_lock"(4242)'),
    ("write", "SELECT pg_catalog.pg_try_advisory_lock(4242)"),
    ("write", "SELECT * FROM pg_advisory_lock_shared(4242)"),
    ("write", "DO $$ BEGIN PERFORM pg_advisory_lock(4242); END $$"),
    ("write", "SELECT run_sql('SELECT pg_advisory_lock(4242)')"),
    ("read", "SELECT run_sql('SELECT pg_advisory_lock(4242)')"),
]


@pytest.mark.parametrize(("key", "attack"), POISONING + TIMEOUTS + SHADOWS + LOCKS)
async def test_an_attack_on_the_shared_session_reaches_no_other_key(
    client: httpx.AsyncClient, pair: LocalPair, key: str, attack: str
) -> None:
    await warm_victim(client)
    alone = await query(client, key, attack)
    assert alone.status_code < 500, alone.text
    inside = await transaction(client, key, "SELECT 1", attack)
    assert inside.status_code < 500, inside.text
    await assert_victim_unharmed(client, pair)


@pytest.mark.parametrize(
    "attack",
    [
        "DEALLOCATE ALL",
        "PREPARE p AS SELECT 1",
        "SELECT name FROM pg_prepared_statements",
        'SELECT statement FROM "pg_catalog"."pg_prepared_statements"',
        "SELECT * FROM pg_prepared_statement()",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT mirrorpool_read_only",
    ],
)
async def test_what_reaches_mirrorpools_own_session_state_is_refused_before_it_runs(
    client: httpx.AsyncClient, attack: str
) -> None:
    for key in ("read", "write", "admin"):
        answer = await query(client, key, attack)
        assert answer.status_code == 400, (key, answer.text)
        assert answer.json()["type"] == "urn:mirrorpool:problem:invalid-sql"


ESCAPES = [
    'SET "role" = postgres',
    f'SET "role" = {SERVICE}',
    'RESET "role"',
    f'SET U&"r\\006Fle" = {SERVICE}',
    f"SELECT U&\"set\\005fconfig\"('role', '{SERVICE}', true)",
    f"SELECT \"set_config\"('role', '{SERVICE}', false)",
    "SELECT pg_catalog.set_config('role', 'mirrorpool_owner', true)",
    "SET SESSION AUTHORIZATION postgres",
    "DO $$ BEGIN EXECUTE 'RESET ROLE'; END $$",
    f"DO $$ BEGIN EXECUTE 'SET ROLE {SERVICE}'; END $$",
    f"SELECT run_sql('SET ROLE {SERVICE}')",
    "RESET ALL",
]


@pytest.mark.parametrize("escape", ESCAPES)
async def test_a_role_key_never_reads_what_its_role_may_not(
    client: httpx.AsyncClient, world: dict[str, str], escape: str
) -> None:
    role = world["role"]
    for key in ("role", "role2"):
        # The escape and the read in one transaction: the escape's effect, if any, holds.
        attempt = await transaction(client, key, escape, "SELECT x FROM secret")
        assert attempt.status_code in (400, 403), (key, attempt.text)
        if attempt.json().get("sqlstate") is not None:
            assert attempt.json()["sqlstate"] in ("42501", "25006"), attempt.text
        who = await query(client, key, "SELECT current_user::text, session_user::text")
        assert who.json()["rows"] == [[role, role]]
        read = await query(client, key, "SELECT x FROM secret")
        assert (read.status_code, read.json()["sqlstate"]) == (403, "42501")
        assert (await query(client, key, "SELECT v FROM pub")).json()["rows"] == [["public"]]


async def test_role_keys_log_in_on_pools_of_their_own(
    client: httpx.AsyncClient, world: dict[str, str]
) -> None:
    assert (await query(client, "role", "SELECT 1")).status_code == 200
    stats = await client.get("/pool/stats", headers={"Authorization": f"Bearer {KEYS['admin']}"})
    primary = next(n for n in stats.json()["nodes"] if n["name"] == "primary")
    assert list(primary["logins"]) == [world["role"]]
    assert primary["logins"][world["role"]]["pool_max"] == 1
    who = await query(client, "write", "SELECT current_user::text")
    assert who.json()["rows"] == [[SERVICE]]


LARGE_OBJECTS = [
    "SELECT lo_from_bytea(0, 'x')",
    'SELECT "lo_create"(0)',
    "SELECT pg_catalog.lo_import('/etc/hostname')",
    'SELECT U&"lo\\005fcreat"(-1)',
    "SELECT * FROM lo_create(0)",
    "SELECT /* lo */ lo_create(0) -- x",
    "DO $$ BEGIN PERFORM lo_create(0); END $$",
    "SELECT run_sql('SELECT lo_create(0)')",
    "SELECT run_sql('SELECT lo_from_bytea(0, ''x''::bytea)')",
]


def large_objects(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("attack", LARGE_OBJECTS)
async def test_a_read_key_leaves_no_large_object(
    client: httpx.AsyncClient, pair: LocalPair, attack: str
) -> None:
    before = large_objects(pair)
    for key in ("read", "role2"):
        alone = await query(client, key, attack)
        assert alone.status_code < 500, alone.text
        inside = await transaction(client, key, "SELECT 1", attack)
        assert inside.status_code < 500, inside.text
        flagged = await query(client, "write", "SELECT 1", read_only=True)
        assert flagged.status_code == 200
    # A write key sending the same with read_only set is held to the same rules.
    assert (await query(client, "write", attack, read_only=True)).status_code < 500
    assert large_objects(pair) == before


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT pg_notify('mp_channel', 'leaked')",
        "SELECT \"pg_notify\"('mp_channel', 'leaked')",
        "NOTIFY mp_channel, 'leaked'",
        "DO $$ BEGIN PERFORM pg_notify('mp_channel', 'leaked'); END $$",
        "SELECT run_sql('NOTIFY mp_channel, ''leaked''')",
    ],
)
async def test_a_read_key_sends_no_notification(
    client: httpx.AsyncClient, pair: LocalPair, attack: str
) -> None:
    listener = psycopg.connect(pair.primary.dsn(), autocommit=True)
    try:
        listener.execute("LISTEN mp_channel")
        assert (await query(client, "read", attack)).status_code < 500
        # Notifications arrive in commit order: the marker comes first unless one leaked.
        marker = await query(client, "write", "SELECT pg_notify('mp_channel', 'marker')")
        assert marker.status_code == 200
        first = next(listener.notifies(timeout=10, stop_after=1))
        assert first.payload == "marker"
    finally:
        listener.close()


KILLS = [
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'",
    "SELECT \"pg_terminate_backend\"(pid) FROM pg_stat_activity WHERE application_name = 'victim'",
    'SELECT U&"pg\\005fterminate\\005fbackend"(pid) FROM pg_stat_activity'
    " WHERE application_name = 'victim'",
    "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_stat_activity"
    " WHERE application_name = 'victim'",
    "SELECT * FROM pg_terminate_backend((SELECT pid FROM pg_stat_activity"
    " WHERE application_name = 'victim'))",
]


@pytest.mark.parametrize("attack", KILLS)
async def test_no_key_ends_or_cancels_another_backend(
    client: httpx.AsyncClient, pair: LocalPair, attack: str
) -> None:
    # The victim: another session of the service's own login, running a statement.
    victim = await psycopg.AsyncConnection.connect(
        pair.primary.dsn(user=SERVICE), autocommit=True, application_name="victim"
    )
    try:
        running = asyncio.ensure_future(victim.execute("SELECT pg_sleep(1.5), 1"))
        await eventually(lambda: busy(pair, "victim"), "the victim's statement to run")
        for key in ("read", "write", "admin", "role", "role2"):
            answer = await query(client, key, attack)
            assert answer.status_code in (400, 403), (key, answer.text)
        # Through a function that runs its SQL, a role key is its own login: PostgreSQL
        # refuses it the other login's backends.
        dynamic = await query(
            client,
            "role",
            "SELECT run_sql('SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = ''victim''')",
        )
        assert dynamic.json()["sqlstate"] == "42501", dynamic.text
        cur = await running
        assert (await cur.fetchone()) is not None
    finally:
        await victim.close()


def busy(pair: LocalPair, application: str) -> bool:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'active'",
            [application],
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize(
    "attack",
    [
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "copy (select 1) to program 'touch /tmp/mp-owned'",
        "COPY pub TO '/tmp/mp-pub'",
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT * FROM pg_catalog.pg_ls_dir('.')",
        "SELECT run_sql('COPY (SELECT 1) TO PROGRAM ''id''')",
    ],
)
async def test_server_files_and_programs_stay_out_of_reach(
    client: httpx.AsyncClient, attack: str
) -> None:
    for key in ("read", "write", "role"):
        answer = await query(client, key, attack)
        assert answer.status_code in (400, 403), (key, answer.text)


async def test_no_key_reads_the_sequence_values_another_key_drew(
    client: httpx.AsyncClient, pair: LocalPair
) -> None:
    as_owner(pair, "CREATE TABLE IF NOT EXISTS orders_seq (id serial PRIMARY KEY, who text)")
    drawn = await query(client, "write", "INSERT INTO orders_seq (who) VALUES ('a') RETURNING id")
    assert drawn.status_code == 200
    for key, sql in (
        ("read", "SELECT currval('orders_seq_id_seq')"),
        ("write", "SELECT lastval()"),
        ("admin", "SELECT \"currval\"('orders_seq_id_seq')"),
        ("write", "SELECT pg_catalog.currval('orders_seq_id_seq'::regclass)"),
    ):
        # On the same pooled session, the other key's value would still be there.
        peek = await query(client, key, sql)
        assert (peek.status_code, peek.json()["sqlstate"]) == (409, "55000"), (key, peek.text)
    # Within one's own transaction, currval still says what this request drew.
    own = await transaction(
        client,
        "write",
        "INSERT INTO orders_seq (who) VALUES ('b') RETURNING id",
        "SELECT currval('orders_seq_id_seq')",
    )
    results = own.json()["results"]
    assert results[1]["rows"] == [[str(results[0]["rows"][0][0])]]
