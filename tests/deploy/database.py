"""Running deploy/'s own SQL and commands for real, on a local PostgreSQL server (app/devdb/)
that stands for the one a deployment starts with, then looking at what it made of the logins:
what a user would meet when mirrorpool starts, migrates and serves through them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.cluster.logins import LoginPrivileges, privileges_of
from app.devdb import OWNER, SERVICE, LocalPair
from app.dsn import parse_dsn


@contextmanager
def fresh_server(folder: Path) -> Iterator[LocalPair]:
    """A primary of its own, with no mirror, that has only its superuser as logins: the
    harness's own owner and service logins (app/devdb/logins.py) carry names deploy/ uses too, so
    they are renamed out of the way, as if they had never been made."""
    with LocalPair(folder, mirrors=0) as pair, pair.primary.connect() as conn:
        for login in (SERVICE, OWNER):
            conn.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                    sql.Identifier(login), sql.Identifier(f"harness_{login}")
                )
            )
        conn.close()
        yield pair


def create_database(pair: LocalPair, name: str, owner: str | None = None) -> None:
    """A database as initdb makes it: from template0, since the harness changed template1."""
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if owner is not None:
        query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    with pair.primary.connect() as conn:
        conn.execute(query)


def local_dsn(dsn: str, ports: dict[str, int], **overrides: str) -> str:
    """A deployment's DSN, pointed at local servers: each of its hosts (one, or a libpq list)
    becomes 127.0.0.1 on the port `ports` gives that host name; a host not in `ports` is a
    mistake in the DSN. Login, password, database and the rest stay the deployment's."""
    params: dict[str, Any] = dict(parse_dsn(dsn))
    hosts = params["host"].split(",")
    unknown = [h for h in hosts if h not in ports]
    assert not unknown, f"the DSN leads to {unknown}, which is none of {sorted(ports)}"
    params["host"] = ",".join("127.0.0.1" for _ in hosts)
    params["port"] = ",".join(str(ports[h]) for h in hosts)
    params.update(overrides)
    return make_conninfo("", **params)


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection, as a login of the deployment."""
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


async def privileges(dsn: str) -> LoginPrivileges:
    """What mirrorpool's own start-up check finds out about the login of `dsn`."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await privileges_of(conn)


def owner_of_schema(conn: psycopg.Connection[Any], schema: str = "public") -> str:
    """The role that owns a schema."""
    row = conn.execute(
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", [schema]
    ).fetchone()
    assert row is not None, f"no schema {schema}"
    return str(row[0])


def owner_of_table(conn: psycopg.Connection[Any], table: str) -> str:
    """The role that owns a table."""
    row = conn.execute(
        "SELECT relowner::regrole::text FROM pg_class WHERE oid = to_regclass(%s)", [table]
    ).fetchone()
    assert row is not None, f"no table {table}"
    return str(row[0])


def mirrorpool(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The `mirrorpool` command of this virtualenv, with only the MIRRORPOOL_* settings given
    (none from the test run's own environment)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "mirrorpool"), *args],
        env=base | env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
