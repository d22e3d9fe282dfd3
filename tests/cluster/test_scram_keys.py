"""Pools log in with SCRAM keys instead of the password (app/cluster/scram.py), against the
harness's real servers (scram-sha-256 over TCP): the probe reads what the stored verifier
says, the keys log in, a pool's connections use them, stale keys give way to the password."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from app.api.auth import hash_key
from app.cluster.scram import (
    MAX_ITERATIONS,
    Keys,
    Target,
    Verifier,
    derive_keys,
    keys_for,
    probe,
    probe_outcome,
    target_of,
    with_keys,
)
from app.cluster.scram_keys import STALE_IN_A_ROW, LoginKeys
from app.devdb import SERVICE, LocalPair, free_ports
from app.dsn import parse_dsn
from tests.attacks.conftest import pgbouncer_settings, query
from tests.conftest import PairFactory, login_role, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer
from tests.waiting import eventually


def role_dsn(pair: LocalPair, name: str, password: str | None, **extra: Any) -> str:
    params: dict[str, Any] = {"user": name, "connect_timeout": 5, **extra}
    if password is not None:
        params["password"] = password
    return psycopg.conninfo.make_conninfo(pair.primary.dsn(password=False), **params)


def stored_verifier(pair: LocalPair, name: str) -> tuple[Verifier, bytes, bytes]:
    """The role's pg_authid verifier, read as the superuser: its salt and iterations, its
    StoredKey and ServerKey."""
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [name]
        ).fetchone()
    assert row is not None
    # SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    method, rest = row[0].split("$", 1)
    assert method == "SCRAM-SHA-256"
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored, server = keys.split(":")
    verifier = Verifier(base64.b64decode(salt), int(iterations))
    return verifier, base64.b64decode(stored), base64.b64decode(server)


def set_password(pair: LocalPair, name: str, password: str) -> None:
    with pair.primary.connect() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(password))
        )


def auth_failures(pair: LocalPair, name: str) -> int:
    """How many logins as `name` the primary refused, by its log."""
    text = pair.primary.log_path.read_text(errors="replace")
    return text.count(f'password authentication failed for user "{name}"')


def client_key_of(conn: psycopg.AsyncConnection[Any]) -> tuple[str | None, bytes]:
    """The scram_client_key a live connection logged in with (libpq's own record of its
    conninfo), and the password it had."""
    options = {o.keyword: o.val for o in conn.pgconn.info}
    key = options.get(b"scram_client_key")
    return (key.decode() if key else None), conn.pgconn.password


async def test_the_probe_says_the_verifiers_salt_and_iterations(pair: LocalPair) -> None:
    name, password = login_role(pair, "mp_scram")
    target = target_of(parse_dsn(role_dsn(pair, name, password)))
    assert target is not None
    verifier, stored_key, server_key = stored_verifier(pair, name)
    assert await probe(target) == verifier
    assert verifier.iterations == 4096
    # The keys derived from it are the verifier's: ServerKey, and H(ClientKey) = StoredKey.
    keys = derive_keys(password, verifier)
    assert base64.b64decode(keys.server) == server_key
    assert hashlib.sha256(base64.b64decode(keys.client)).digest() == stored_key
    # The probe never logged in: the server refused nobody.
    assert auth_failures(pair, name) == 0


async def test_the_keys_log_in_with_no_password_and_wrong_keys_do_not(pair: LocalPair) -> None:
    name, password = login_role(pair, "mp_scram")
    params = parse_dsn(role_dsn(pair, name, password))
    target = target_of(params)
    assert target is not None
    verifier = await probe(target)
    assert verifier is not None
    keyed = with_keys(params, derive_keys(password, verifier))
    assert "password" not in parse_dsn(keyed)
    async with await psycopg.AsyncConnection.connect(keyed) as conn:
        cur = await conn.execute("SELECT current_user")
        assert await cur.fetchone() == (name,)
        assert client_key_of(conn)[1] == b""
    wrong = with_keys(params, derive_keys(password + "x", verifier))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(wrong)


@contextlib.asynccontextmanager
async def keyed_pool(dsn: str) -> AsyncIterator[tuple[AsyncConnectionPool[Any], LoginKeys]]:
    logins = LoginKeys()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, connection_class=logins.connection_class, min_size=1, max_size=2, open=False
    )
    try:
        async with pool:
            yield pool, logins
    finally:
        await logins.close()


async def test_a_pool_logs_in_with_keys_and_a_password_set_again_costs_nothing(
    pair: LocalPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name, password = login_role(pair, "mp_scram")
    dsn = role_dsn(pair, name, password)
    settings = settings_for(pair, primary_dsn=dsn, mirror_dsn=None, pool_min_size=2)
    async with serving_ready(settings) as (app, client):
        node = app.state.cluster.nodes[0]
        # The first connections logged in with the password, and started the probe.
        await eventually(lambda: node.scram.uses_keys(node.dsn), "the keys")
        verifier, _, _ = stored_verifier(pair, name)
        keys = derive_keys(password, verifier)

        async def opened_with(key: str) -> bool:
            """Whether a new connection of the pool logs in with `key` and no password."""
            await node.drain()
            async with node.pool.connection() as conn:
                return client_key_of(conn) == (key, b"")

        await eventually(lambda: opened_with(keys.client), "a connection made with the keys")
        assert auth_failures(pair, name) == 0

        # The password set again, to the same text: a new salt, and the keys are stale. The
        # service goes on opening connections all the same (the password's login), nothing
        # fails, and the next ones log in with the new keys.
        set_password(pair, name, password)
        new_verifier, _, _ = stored_verifier(pair, name)
        assert new_verifier.salt != verifier.salt
        new_keys = derive_keys(password, new_verifier)
        for _ in range(3):
            await node.drain()
            answer = await client.post("/v1/query", json={"sql": "SELECT current_user"})
            assert answer.status_code == 200, answer.text
        await eventually(lambda: opened_with(new_keys.client), "connections with the new keys")
        # What shows that the keys were in use: the server refused the stale ones (the
        # password alone is never refused), and the pool counted no failed connection.
        await eventually(lambda: auth_failures(pair, name) >= 1, "the stale keys refused")
        answer = await client.get("/pool/stats")
        stats, stats_text = answer.json(), answer.text
    pool = next(n["pool"] for n in stats["nodes"] if n["name"] == "primary")
    assert pool["connections_errors"] == 0
    assert pool["requests_errors"] == 0
    # The keys are secrets: in no log line and not in /pool/stats.
    for secret in (keys.client, keys.server, new_keys.client, new_keys.server, password):
        assert secret not in caplog.text
        assert secret not in stats_text


async def test_a_password_changed_to_one_the_service_does_not_know_fails_as_before(
    pair: LocalPair,
) -> None:
    name, password = login_role(pair, "mp_scram")
    dsn = role_dsn(pair, name, password)
    async with keyed_pool(dsn) as (_, logins):
        await eventually(lambda: logins.uses_keys(dsn), "the keys")
        set_password(pair, name, "not-" + password)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            # The password's own error (the keys' is not chained to it).
            await logins.connection_class.connect(dsn)
        # The keys went with the password; while it is refused, no probe and no keys: each
        # connection is one login refused, as before.
        assert not logins.uses_keys(dsn)
        failures = auth_failures(pair, name)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            await logins.connection_class.connect(dsn)
        assert not logins._probes and not logins.uses_keys(dsn)
        await eventually(lambda: auth_failures(pair, name) == failures + 1, "one more refusal")
        # Set back: the password logs in, and the keys of the new verifier come.
        set_password(pair, name, password)
        await (await logins.connection_class.connect(dsn)).close()
        await eventually(lambda: logins.uses_keys(dsn), "the new keys")
        conn = await logins.connection_class.connect(dsn)
        assert client_key_of(conn) == (
            derive_keys(password, stored_verifier(pair, name)[0]).client,
            b"",
        )
        await conn.close()


async def test_a_password_that_never_logged_in_is_never_probed_for(pair: LocalPair) -> None:
    name, _ = login_role(pair, "mp_scram")
    dsn = role_dsn(pair, name, "wrong-password")
    logins = LoginKeys()
    try:
        for _ in range(2):
            with pytest.raises(psycopg.OperationalError, match="password authentication"):
                await logins.connection_class.connect(dsn)
            assert not logins._probes
        await eventually(lambda: auth_failures(pair, name) == 2, "two refusals, no more")
    finally:
        await logins.close()


@pytest.fixture
def hba_roles(pair: LocalPair) -> Iterator[dict[str, tuple[str, str]]]:
    """Two roles the primary lets in over TCP by trust and by md5 (a stored md5 hash), by
    lines of their own at the top of its pg_hba.conf; removed after."""
    suffix = uuid.uuid4().hex[:8]
    roles = {"trust": (f"mp_trust_{suffix}", "trust-pw"), "md5": (f"mp_md5_{suffix}", "md5-pw")}
    hba = pair.primary.data_dir / "pg_hba.conf"
    original = hba.read_text()
    lines = "".join(
        f"host all {name} 127.0.0.1/32 {method}\n" for method, (name, _) in roles.items()
    )
    with pair.primary.connect() as conn:
        conn.execute("SET password_encryption = 'md5'")
        for name, secret in roles.values():
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(secret)
                )
            )
        hba.write_text(lines + original)
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield roles
    finally:
        with pair.primary.connect() as conn:
            hba.write_text(original)
            conn.execute("SELECT pg_reload_conf()")
            for name, _ in roles.values():
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize("method", ["trust", "md5"])
async def test_a_node_without_scram_logs_in_with_the_password(
    pair: LocalPair, hba_roles: dict[str, tuple[str, str]], method: str
) -> None:
    name, password = hba_roles[method]
    dsn = role_dsn(pair, name, password)
    target = target_of(parse_dsn(dsn))
    assert target is not None

    async def says_method() -> bool:  # the reload is the postmaster's, on its own time
        return await probe_outcome(target) is True

    await eventually(says_method, f"{method} for {name}")
    assert await probe(target) is None
    async with keyed_pool(dsn) as (pool, logins):
        for _ in range(3):
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT current_user")
                assert await cur.fetchone() == (name,)
                assert client_key_of(conn) == (None, password.encode())
        await eventually(lambda: not logins._probes, "the probe done")
        assert not logins.uses_keys(dsn)


async def test_an_unreachable_node_has_no_keys_and_the_probe_keeps_its_timeout() -> None:
    refused = target_of(parse_dsn(f"host=127.0.0.1 port={free_ports(1)[0]} user=u password=p"))
    assert refused is not None
    assert await probe_outcome(refused) is False

    # A server that takes the connection and never answers: bounded by connect_timeout.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        stalled = target_of(
            parse_dsn(f"host=127.0.0.1 port={port} user=u password=p connect_timeout=1")
        )
        assert stalled is not None and stalled.timeout == 1
        started = asyncio.get_running_loop().time()
        assert await probe(stalled) is None
        assert asyncio.get_running_loop().time() - started < 3


def test_what_gets_no_keys() -> None:
    logins = LoginKeys()
    for dsn in (
        "host=127.0.0.1 user=u",  # no password in the conninfo: a passfile, PGPASSWORD
        "host=127.0.0.1 user=u password=p\u00e4ss",  # not ASCII: SASLprep would matter
        "host=127.0.0.1 user=u password='a\tb'",  # not printable
        "host=a,b user=u password=p",  # several hosts
        "service=app user=u password=p",
        "host=127.0.0.1 user=u password=p sslnegotiation=direct",
    ):
        assert logins.find(dsn) is None, dsn
    with pytest.raises(ValueError, match="iterations"):
        derive_keys("p", Verifier(b"salt", MAX_ITERATIONS + 1))
    assert repr(Keys("client", "server")) == "Keys(***)"


def self_signed(key: Path, certificate: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (its name and its address)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip


def turn_tls_on(pair: LocalPair) -> None:
    """A self-signed certificate for the primary, and ssl = on (a reload)."""
    data = pair.primary.data_dir
    self_signed(data / "server.key", data / "server.crt")
    for name in ("server.key", "server.crt"):
        (data / name).chmod(0o600)
        pair.run_as.own(data / name)
    with pair.primary.connect() as conn:
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")


async def test_over_tls_the_probe_and_the_keys_work_with_channel_binding(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    own = make_pair(mirrors=0)
    turn_tls_on(own)
    name, password = login_role(own, "mp_tls")
    dsn = role_dsn(own, name, password, sslmode="require", channel_binding="require")

    async def tls_login() -> bool:  # the reload is the postmaster's, on its own time
        try:
            conn = await psycopg.AsyncConnection.connect(dsn)
        except psycopg.OperationalError:
            return False
        await conn.close()
        return True

    await eventually(tls_login, "TLS on")
    target = target_of(parse_dsn(dsn))
    assert target is not None and target.sslmode == "require"
    verifier, _, _ = stored_verifier(own, name)
    assert await probe(target) == verifier
    # Under verify-ca and verify-full the probe verifies the server as libpq would (it is
    # sent the user's and the database's names): the server's own certificate as the root
    # passes, another one does not.
    root = own.primary.data_dir / "server.crt"
    for mode in ("verify-ca", "verify-full"):
        verified = target_of(parse_dsn(f"{dsn} sslmode={mode} sslrootcert={root}"))
        assert verified is not None and await probe(verified) == verifier, mode
    other = tmp_path / "other.crt"
    self_signed(tmp_path / "other.key", other)
    unverified = target_of(parse_dsn(f"{dsn} sslmode=verify-ca sslrootcert={other}"))
    assert unverified is not None and await probe(unverified) is None
    async with keyed_pool(dsn) as (pool, logins):
        await eventually(lambda: logins.uses_keys(dsn), "the keys")
        keys = derive_keys(password, verifier)

        async def opened_with_keys() -> bool:
            await pool.drain()
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                assert await cur.fetchone() == (True,)
                return client_key_of(conn) == (keys.client, b"")

        # channel_binding=require: libpq logged in with SCRAM-SHA-256-PLUS, keys and all.
        await eventually(opened_with_keys, "a TLS connection made with the keys")
    assert auth_failures(own, name) == 0


async def test_keys_stale_twice_in_a_row_are_given_up(pair: LocalPair) -> None:
    name, password = login_role(pair, "mp_scram")
    dsn = role_dsn(pair, name, password)
    logins = LoginKeys()
    try:
        # The password logs in, and starts the probe.
        await (await logins.connection_class.connect(dsn)).close()
        for _ in range(STALE_IN_A_ROW):
            await eventually(lambda: logins.uses_keys(dsn), "the keys")
            set_password(pair, name, password)  # a new salt: these keys are stale
            conn = await logins.connection_class.connect(dsn)  # and yet it logs in
            await conn.close()
        # Given up on: the password, and no probe, for GIVE_UP_S.
        assert not logins.uses_keys(dsn)
        await (await logins.connection_class.connect(dsn)).close()
        assert not logins._probes
        assert not logins.uses_keys(dsn)
    finally:
        await logins.close()


async def probed_twice(dsn: str) -> tuple[Target, Verifier | None, Verifier | None]:
    """The conninfo's probe target, and what two probes of it in a row read."""
    target = target_of(parse_dsn(dsn))
    assert target is not None
    return target, await probe(target), await probe(target)


@pytest.fixture
def bouncer(pair: LocalPair, work_dir: Path) -> Iterator[LocalPgBouncer]:
    """PgBouncer in front of the shared primary, with plain-text passwords."""
    with LocalPgBouncer(pair, work_dir / f"pgbouncer-{uuid.uuid4().hex[:6]}") as pgbouncer:
        yield pgbouncer


async def test_behind_pgbouncer_with_plain_passwords_no_keys_and_nothing_fails(
    bouncer: LocalPgBouncer,
) -> None:
    # PgBouncer makes up a salt for every login from the password in its auth_file: keys
    # derived from one would fail at the next. Two probes that disagree say so.
    dsn = bouncer.dsn(user=SERVICE)
    target, first, second = await probed_twice(dsn)
    assert first is not None and second is not None and first != second
    assert await keys_for(target, parse_dsn(dsn)["password"]) is True
    async with keyed_pool(dsn) as (pool, logins):
        await eventually(lambda: not logins._probes, "the probes done")
        for _ in range(3):
            await pool.drain()
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                assert client_key_of(conn)[0] is None
        assert not logins.uses_keys(dsn)
        assert pool.get_stats().get("connections_errors", 0) == 0


async def test_a_key_roles_pool_logs_in_with_its_keys(pair: LocalPair) -> None:
    name, password = login_role(pair, "mp_keyrole")
    secret = "r" * 24
    keys = [{"id": "reader", "sha256": hash_key(secret), "scopes": ["read"], "role": name}]
    settings = settings_for(
        pair, mirror_dsn=None, auth="keys", api_keys=keys, role_passwords={name: password}
    )
    headers = {"Authorization": f"Bearer {secret}"}
    async with serving_ready(settings) as (app, client):

        async def as_role() -> None:
            answer = await client.post(
                "/v1/query", json={"sql": "SELECT current_user"}, headers=headers
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["rows"] == [[name]]

        await as_role()
        node = app.state.cluster.nodes[0]
        await eventually(lambda: node.scram.uses_keys(node.login_dsn(name)), "the role's keys")
        verifier, _, _ = stored_verifier(pair, name)
        role_keys = derive_keys(password, verifier)
        pool = node.logins[name]

        async def opened_with_keys() -> bool:
            await pool.drain()
            await as_role()
            async with pool.connection() as conn:
                return client_key_of(conn) == (role_keys.client, b"")

        await eventually(opened_with_keys, "the role's connection made with its keys")


def test_a_conninfo_without_a_port_probes_pgport_as_libpq_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPORT", "6543")
    target = target_of({"host": "127.0.0.1", "user": "u", "password": "p"})
    assert target is not None and target.port == 6543
    monkeypatch.delenv("PGPORT")
    target = target_of({"host": "127.0.0.1", "user": "u", "password": "p"})
    assert target is not None and target.port == 5432


async def test_behind_pgbouncer_the_service_makes_no_keys_and_no_probes(
    pair: LocalPair, bouncer: LocalPgBouncer
) -> None:
    # PgBouncer with plain-text passwords runs PBKDF2 on its one thread for each probe, and
    # under the tests' 1 ms timeouts that stall reached other clients' statements; its
    # clients' logins are few and long-lived, so the service logs in with the password.
    dsn = bouncer.dsn("postgres", user=SERVICE)
    role, _ = login_role(pair, "lowpriv")
    settings = settings_for(pair, **pgbouncer_settings(pair, dsn, role))
    async with serving_ready(settings) as (app, client):
        r = await query(client, "write", "SELECT 1")
        assert r.status_code == 200, r.text
        for node in app.state.cluster.nodes:
            assert not node.scram.enabled
            assert not node.scram.uses_keys(node.dsn)
            assert not node.scram._probes
