"""What each login mirrorpool serves through may do, checked at start-up.

The service's own login (each node's DSN) and every role a key logs in as must be ordinary
logins: PostgreSQL enforces grants, row-level security and READ ONLY only on them. A
superuser, or a login that may create roles, bypass row-level security, or run programs and
read or write files on the server (membership of pg_execute_server_program,
pg_read_server_files, pg_write_server_files), or that may SET ROLE to a role that can do
any of that, could go around all of that with one statement,
so start-up stops on one unless MIRRORPOOL_ALLOW_SUPERUSER=true, which turns the refusal
into a warning in the log and on /health. A key's role that cannot log in stops start-up
too, naming the key. A node that does not answer at start-up is not checked then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from app.cluster.node import Node
from app.errors import SettingsError
from app.redaction import redactor
from app.settings import ENV_PREFIX, Settings

logger = logging.getLogger(__name__)

# Every privilege a login must not have, as one row.
PRIVILEGES_SQL = """
SELECT current_user,
       r.rolsuper,
       r.rolcreaterole,
       r.rolbypassrls,
       ARRAY(SELECT b.rolname::text FROM pg_roles b
             WHERE b.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                 'pg_write_server_files')
               AND pg_has_role(r.oid, b.oid, 'MEMBER')
             ORDER BY 1),
       ARRAY(SELECT n FROM unnest(current_schemas(false)) AS n
             WHERE has_schema_privilege(n, 'CREATE')
             ORDER BY 1),
       ARRAY(SELECT b.rolname::text FROM pg_roles b
             WHERE b.oid <> r.oid AND (b.rolsuper OR b.rolcreaterole OR b.rolbypassrls)
               AND pg_has_role(r.oid, b.oid, 'MEMBER')
             ORDER BY 1),
       has_database_privilege(current_database(), 'CREATE')
FROM pg_roles r WHERE r.rolname = current_user
"""
# How libpq says the server refused a login (it gives no SQLSTATE for a failed connection).
_REFUSED_LOGIN = (
    "authentication failed",
    "does not exist",
    "pg_hba.conf",
    "not permitted to log in",
    "no password supplied",
)
ALLOW_SETTING = f"{ENV_PREFIX}ALLOW_SUPERUSER=true"


@dataclass(frozen=True)
class LoginPrivileges:
    """What one login may do that matters to mirrorpool."""

    user: str
    superuser: bool
    create_role: bool
    bypass_rls: bool
    server_roles: tuple[str, ...]
    creates_in: tuple[str, ...]
    # Privileged roles it may SET ROLE to (a member of them, however indirectly).
    may_become: tuple[str, ...] = ()
    # CREATE on the database (its owner has it): it may create schemas, one named like
    # itself among them, which comes first on the default search_path ("$user", public).
    creates_schemas: bool = False

    def dangers(self) -> list[str]:
        """What makes the login able to go around PostgreSQL's enforcement."""
        found = []
        if self.superuser:
            found.append("is a superuser")
        if self.create_role:
            found.append("may create roles (CREATEROLE)")
        if self.bypass_rls:
            found.append("bypasses row-level security (BYPASSRLS)")
        found += [f"is a member of {role}" for role in self.server_roles]
        found += [f"may SET ROLE {role}, which is privileged" for role in self.may_become]
        return found


async def privileges_of(conn: AsyncConnection[Any]) -> LoginPrivileges:
    """The privileges of the login `conn` is connected as."""
    cur = await conn.execute(PRIVILEGES_SQL, prepare=False)
    row = await cur.fetchone()
    if row is None:  # current_user is always in pg_roles
        raise psycopg.InterfaceError("the login's role was not found in pg_roles")
    user, superuser, create_role, bypass_rls, server_roles, creates_in, may_become, schemas = row
    return LoginPrivileges(
        str(user),
        bool(superuser),
        bool(create_role),
        bool(bypass_rls),
        tuple(server_roles),
        tuple(creates_in),
        tuple(may_become),
        bool(schemas),
    )


async def check_logins(
    nodes: list[Node], settings: Settings, roles: Iterable[tuple[str, str]]
) -> list[str]:
    """Check the service's login on every node that answers, and each (key id, role) login
    on the first node that does. Raises SettingsError on a privileged login (unless allowed)
    and on a role that cannot log in; returns the warnings to show. The logins are tried
    side by side (each is a new connection), and judged in order."""
    warnings: list[str] = []
    reached: Node | None = None
    found = await _side_by_side([_inspect(n.name, n.dsn, settings, None) for n in nodes])
    for node, privileges in zip(nodes, found, strict=True):
        if privileges is None:
            continue
        reached = reached or node
        warnings += _judge(f"{node.name}'s login {privileges.user}", privileges, settings)
    if reached is None:
        return warnings
    pairs = list(roles)
    first_key: dict[str, str] = {}  # each role is checked once, named by its first key
    for key_id, role in pairs:
        first_key.setdefault(role, key_id)
    inspected = await _side_by_side(
        [_inspect(reached.name, reached.login_dsn(r), settings, k) for r, k in first_key.items()]
    )
    checked = {
        role: [] if privileges is None else _judge(f"role {role}", privileges, settings, key_id)
        for (role, key_id), privileges in zip(first_key.items(), inspected, strict=True)
    }
    for _, role in pairs:
        warnings += checked[role]
    return warnings


async def _side_by_side(
    checks: list[Coroutine[Any, Any, LoginPrivileges | None]],
) -> list[LoginPrivileges | None]:
    """Run the checks at once; the first one's failure, in order, is raised."""
    results = await asyncio.gather(*checks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


async def _inspect(
    node: str, dsn: str, settings: Settings, key_id: str | None
) -> LoginPrivileges | None:
    """The login's privileges, or None when the server is not reachable now."""
    try:
        conn = await AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=settings.connect_timeout,
            application_name=f"{settings.application_name}-login-check",
        )
    except psycopg.OperationalError as exc:
        refused = any(words in str(exc) for words in _REFUSED_LOGIN)
        if key_id is not None and refused:
            # libpq's "connection to server at ... failed: " prefix says nothing more.
            message = redactor.scrub(str(exc).strip().splitlines()[-1].split("failed: ")[-1])
            raise SettingsError(
                f"key {key_id!r}: its role cannot log in on {node}: {message} (create it "
                "with LOGIN, and give its password in MIRRORPOOL_ROLE_PASSWORDS or a pgpass file)"
            ) from None
        logger.warning("cannot check the login on %s now: %s", node, redactor.scrub(str(exc)))
        return None
    try:
        return await privileges_of(conn)
    finally:
        await conn.close()


def _judge(
    what: str, privileges: LoginPrivileges, settings: Settings, key_id: str | None = None
) -> list[str]:
    warnings = []
    dangers = privileges.dangers()
    if dangers:
        whose = f"key {key_id!r}: " if key_id else ""
        said = f"{whose}{what} {' and '.join(dangers)}"
        if not settings.allow_superuser:
            raise SettingsError(
                f"{said}: PostgreSQL would enforce nothing on it; serve through an "
                f"unprivileged login (README: Access), or set {ALLOW_SETTING} to allow it"
            )
        warnings.append(
            f"{said} ({ALLOW_SETTING}): grants, row-level security and READ ONLY do not bind it"
        )
    if privileges.creates_in and not privileges.superuser:
        logger.warning(
            "%s may create objects in %s, on its search_path: a key could define functions "
            "or tables there that other keys' statements reach; grant CREATE to the schema "
            "owner only (README: Access)",
            what,
            ", ".join(privileges.creates_in),
        )
    if privileges.creates_schemas and not privileges.superuser:
        logger.warning(
            "%s may create schemas in the database (CREATE on it, which its owner has): one "
            'named like the login would come first on the default search_path ("$user", '
            "public), ahead of the schema's tables for every key; mirrorpool refuses CREATE "
            "SCHEMA, but revoke it (README: Access)",
            what,
        )
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings
