"""The SCRAM keys of each login of a node's pools (app/cluster/scram.py), and the connection
class that logs in with them.

A login with keys that fails is tried once more with the password; when that works, the keys
were stale (the password was set again, even to the same text: a new salt) and are dropped,
to be probed for again; keys stale twice in a row are given up for a while (a server that
does not keep its verifier). A pool never fails a connection the password alone would have
made.

Nothing new happens when the conninfo carries no password (a passfile, PGPASSWORD), lists
several hosts, names a service, asks for direct TLS, or when libpq is older than 18. The keys
are secrets like the password: they are never logged, and leave this module only in the
conninfo handed to libpq.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg import AsyncConnection, pq
from psycopg import conninfo as pg_conninfo

from app.cluster.scram import Keys, Target, keys_for, target_of, usable_password, with_keys
from app.redaction import redactor
from app.supervisor import Supervisor

logger = logging.getLogger(__name__)

# libpq takes scram_client_key and scram_server_key from version 18 on.
LIBPQ_WITH_KEYS = 180000
# How long a login the probe found no keys for goes on logging in with its password before
# the next probe: the server asked for no SCRAM (trust, md5, ...), or did not answer.
NOT_SCRAM_RETRY_S = 60.0
FAILED_RETRY_S = 2.0
# Keys found stale this many times in a row (new keys each time, none of which logged in)
# are given up for GIVE_UP_S: whatever the server is, it does not keep its verifier.
STALE_IN_A_ROW = 2
GIVE_UP_S = 600.0

# A login: host, port, user, and a hash of the password (the cache holds no password).
LoginId = tuple[str, int, str, str]


@dataclass
class _Entry:
    keys: Keys | None
    retry_at: float = 0.0  # for an entry without keys: when to probe again


class LoginKeys:
    """The keys of every login of one node's pools, probed for in the background.

    A login with no keys yet logs in with its password, and starts the probe for the next
    connections; a probe that found none is repeated NOT_SCRAM_RETRY_S (FAILED_RETRY_S
    when the server did not answer) later. Keys stay until a login with them fails and the
    password's succeeds.
    """

    def __init__(self, supervisor: Supervisor | None = None, name: str = "") -> None:
        # The probes are the supervisor's tasks when there is one (the service's).
        self._supervisor = supervisor
        self._name = name
        self._entries: dict[LoginId, _Entry] = {}
        self._probes: dict[LoginId, asyncio.Task[None]] = {}
        # Per login: how many keys in a row were found stale before one logged in.
        self._stale: dict[LoginId, int] = {}
        self._closed = False
        self.enabled = pq.version() >= LIBPQ_WITH_KEYS
        self.connection_class = self._connection_class()

    def lookup(self, conninfo: str) -> tuple[LoginId, Keys, str] | None:
        """The login of `conninfo`, its keys and the conninfo with them, when known; else
        None, with a probe started when none ran lately."""
        found = self._login(conninfo)
        if found is None or self._closed:
            return None
        login, params, target, password = found
        entry = self._entries.get(login)
        if entry is not None and entry.keys is not None:
            return login, entry.keys, with_keys(params, entry.keys)
        if (entry is None or time.monotonic() >= entry.retry_at) and login not in self._probes:
            self._start_probe(login, target, password)
        return None

    def _start_probe(self, login: LoginId, target: Target, password: str) -> None:
        work = self._probe(login, target, password)
        if self._supervisor is None:
            self._probes[login] = asyncio.get_running_loop().create_task(work)
            return
        try:
            name = f"scram-probe-{self._name}" if self._name else "scram-probe"
            self._probes[login] = self._supervisor.spawn(work, name, log_failure=False)
        except RuntimeError:
            pass  # the supervisor is closed: the service is stopping

    def uses_keys(self, conninfo: str) -> bool:
        """True when new connections of `conninfo` log in with keys now."""
        found = self._login(conninfo)
        entry = self._entries.get(found[0]) if found is not None else None
        return entry is not None and entry.keys is not None

    def _login(self, conninfo: str) -> tuple[LoginId, dict[str, str], Target, str] | None:
        if not self.enabled:
            return None
        try:
            parsed = pg_conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError:
            return None
        params = {k: str(v) for k, v in parsed.items() if v is not None}
        password = params.get("password", "")
        if not usable_password(password) or "scram_client_key" in params:
            return None
        target = target_of(params)
        if target is None:
            return None
        digest = hashlib.sha256(password.encode()).hexdigest()
        return (target.host, target.port, target.user, digest), params, target, password

    async def _probe(self, login: LoginId, target: Target, password: str) -> None:
        found: Keys | bool
        try:
            found = await keys_for(target, password)
        except Exception as exc:  # a task of its own: nobody else would see it
            logger.debug("no SCRAM keys for %s: %s", target.user, type(exc).__name__)
            found = False
        finally:
            self._probes.pop(login, None)
        if isinstance(found, Keys):
            redactor.add(found.client, found.server)  # never logged; scrubbed all the same
            self._entries[login] = _Entry(found)
            logger.debug("SCRAM keys ready for %s at %s:%s", target.user, target.host, target.port)
        else:
            retry = NOT_SCRAM_RETRY_S if found else FAILED_RETRY_S
            self._entries[login] = _Entry(None, time.monotonic() + retry)

    def stale(self, login: LoginId, keys: Keys) -> None:
        """The keys failed where the password logged in: forget them, probe again (unless
        that was the case of the last keys too: then the password for GIVE_UP_S)."""
        entry = self._entries.get(login)
        if entry is None or entry.keys != keys:
            return  # another connection found them stale first
        in_a_row = self._stale[login] = self._stale.get(login, 0) + 1
        if in_a_row < STALE_IN_A_ROW:
            del self._entries[login]
            logger.info("SCRAM keys for %s were stale (password set again?)", login[2])
            return
        self._entries[login] = _Entry(None, time.monotonic() + GIVE_UP_S)
        self._stale.pop(login, None)
        logger.warning(
            "SCRAM keys for %s were stale %d times in a row: logging in with the password for %g s",
            login[2],
            in_a_row,
            GIVE_UP_S,
        )

    def worked(self, login: LoginId) -> None:
        """The keys logged in."""
        self._stale.pop(login, None)

    async def close(self) -> None:
        """Stop the probes still running."""
        self._closed = True
        tasks = list(self._probes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _connection_class(self) -> type[AsyncConnection[Any]]:
        logins = self

        class KeyedConnection(AsyncConnection[Any]):
            """An AsyncConnection that logs in with the login's SCRAM keys when known."""

            @classmethod
            async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                found = logins.lookup(conninfo)
                if found is None:
                    return await super().connect(conninfo, **kwargs)
                login, keys, keyed = found
                try:
                    conn = await super().connect(keyed, **kwargs)
                except psycopg.errors.ConnectionTimeout:
                    raise  # the server did not answer: neither would it to the password
                except psycopg.OperationalError:
                    pass  # outside the handler, so the password's error does not chain it
                else:
                    logins.worked(login)
                    return conn
                conn = await super().connect(conninfo, **kwargs)
                logins.stale(login, keys)
                return conn

        return KeyedConnection
