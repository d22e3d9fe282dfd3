"""Start-up refuses logins PostgreSQL would enforce nothing on, and key roles that cannot log
in; the local pair's own logins are as production should have them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import psycopg
import pytest
from psycopg import sql

from app.api.auth import hash_key
from app.cluster.logins import privileges_of
from app.devdb import OWNER, SERVICE, LocalPair, free_ports
from app.errors import SettingsError
from tests.conftest import login_role, serving, settings_for
from tests.waiting import eventually_sync


def serve_command(pair: LocalPair, dsn: str, **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    variables = {
        "MIRRORPOOL_PRIMARY_DSN": dsn,
        "MIRRORPOOL_PORT": str(free_ports(1)[0]),
        "MIRRORPOOL_AUTH": "disabled",
        "MIRRORPOOL_LOG_LEVEL": "warning",
    } | env
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        env=base | variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_superuser_login_stops_start_up_with_one_line(pair: LocalPair) -> None:
    proc = serve_command(pair, pair.primary.dsn())
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "is a superuser" in lines[0]
    assert "MIRRORPOOL_ALLOW_SUPERUSER=true" in lines[0]
    assert pair.password not in err + out


def test_allowing_a_superuser_serves_with_a_warning_on_health(pair: LocalPair) -> None:
    port = free_ports(1)[0]
    proc = serve_command(
        pair,
        pair.primary.dsn(),
        MIRRORPOOL_ALLOW_SUPERUSER="true",
        MIRRORPOOL_PORT=str(port),
        MIRRORPOOL_HEALTH_INTERVAL="0.2",
    )
    url = f"http://127.0.0.1:{port}"

    def health() -> httpx.Response | None:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else "exited")
        try:
            return httpx.get(url + "/health", timeout=1)
        except httpx.HTTPError:
            return None

    try:
        eventually_sync(lambda: health() is not None, "the server", timeout=30)
        answer = health()
        assert answer is not None
        warnings = answer.json()["warnings"]
        assert len(warnings) == 1
        assert "is a superuser" in warnings[0]
        assert "MIRRORPOOL_ALLOW_SUPERUSER=true" in warnings[0]
        # Allowed, yet still a read request cannot reach the server's programs.
        copy = httpx.post(
            url + "/v1/query",
            json={"sql": "COPY (SELECT 1) TO PROGRAM 'id'", "read_only": True},
            timeout=5,
        )
        assert copy.status_code == 403
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "is a superuser" in err  # and the log said so


@pytest.mark.parametrize(
    ("grant", "said"),
    [
        ("ALTER ROLE {} CREATEROLE", "may create roles"),
        ("ALTER ROLE {} BYPASSRLS", "bypasses row-level security"),
        ("GRANT pg_read_server_files TO {}", "is a member of pg_read_server_files"),
        ("GRANT pg_execute_server_program TO {}", "is a member of pg_execute_server_program"),
        ("GRANT pg_write_server_files TO {}", "is a member of pg_write_server_files"),
        ("ALTER ROLE {} SUPERUSER", "is a superuser"),
    ],
)
async def test_a_privileged_login_stops_start_up(pair: LocalPair, grant: str, said: str) -> None:
    name, password = login_role(pair, "privileged")
    with pair.primary.connect() as conn:
        conn.execute(sql.SQL(grant).format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(pair.primary.dsn(), user=name, password=password)
    settings = settings_for(pair, primary_dsn=dsn, mirror_dsn=None)
    with pytest.raises(SettingsError, match=said) as caught:
        async with serving(settings):
            pass
    assert "MIRRORPOOL_ALLOW_SUPERUSER=true" in str(caught.value)
    assert password not in str(caught.value)


async def test_a_key_whose_role_is_privileged_stops_start_up(pair: LocalPair) -> None:
    name, password = login_role(pair, "superkey")
    with pair.primary.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(name)))
    keys = [{"id": "boss", "sha256": hash_key("k" * 20), "scopes": ["write"], "role": name}]
    settings = settings_for(pair, auth="keys", api_keys=keys, role_passwords={name: password})
    with pytest.raises(SettingsError, match=rf"key 'boss': role {name} is a superuser"):
        async with serving(settings):
            pass


@pytest.mark.parametrize("problem", ["nologin", "wrong password", "no password", "missing"])
async def test_a_key_whose_role_cannot_log_in_stops_start_up_naming_the_key(
    pair: LocalPair, problem: str
) -> None:
    name, password = login_role(pair, "cannot")
    passwords = {name: password}
    if problem == "nologin":
        with pair.primary.connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(name)))
    elif problem == "wrong password":
        passwords = {name: "not-" + password}
    elif problem == "no password":
        passwords = {}
    else:
        name = f"nobody_{uuid.uuid4().hex[:8]}"
    keys = [{"id": "orphan", "sha256": hash_key("o" * 20), "scopes": ["read"], "role": name}]
    settings = settings_for(pair, auth="keys", api_keys=keys, role_passwords=passwords)
    with pytest.raises(SettingsError, match="key 'orphan': its role cannot log in") as caught:
        async with serving(settings):
            pass
    assert "\n" not in str(caught.value)
    assert password not in str(caught.value)


def test_the_cli_names_the_key_whose_role_cannot_log_in(pair: LocalPair) -> None:
    keys = f'[{{"id": "ghost", "sha256": "{hash_key("g" * 20)}", "scopes": ["read"], '
    keys += f'"role": "ghost_{uuid.uuid4().hex[:6]}"}}]'
    proc = serve_command(
        pair, pair.primary.dsn(user=SERVICE), MIRRORPOOL_AUTH="keys", MIRRORPOOL_API_KEYS=keys
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "key 'ghost': its role cannot log in" in err


async def test_the_local_pairs_logins_are_as_production_should_have_them(
    pair: LocalPair,
) -> None:
    service = await psycopg.AsyncConnection.connect(pair.primary.dsn(user=SERVICE))
    try:
        privileges = await privileges_of(service)
    finally:
        await service.close()
    assert privileges.user == SERVICE
    assert privileges.dangers() == []
    assert privileges.creates_in == ()
    with pair.primary.connect(user=OWNER) as owner:
        owner.execute("CREATE TABLE IF NOT EXISTS made_by_a_migration (id serial, v text)")
    with pair.primary.connect(user=SERVICE) as conn:
        # What the schema's owner creates, the service may use: no GRANT by hand.
        conn.execute("INSERT INTO made_by_a_migration (v) VALUES ('x')")
        assert conn.execute("SELECT count(*) > 0 FROM made_by_a_migration").fetchone() == (True,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE the_service_creates_nothing (id int)")
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT r.rolsuper, n.nspowner::regrole::text FROM pg_roles r, pg_namespace n"
            " WHERE r.rolname = %s AND n.nspname = 'public'",
            [OWNER],
        ).fetchone()
    assert row == (False, OWNER)
