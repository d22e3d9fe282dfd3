"""The SCRAM keys of each login of a node's pools (app/cluster/scram.py), and the connection
class that logs in with them.

A login's keys are probed for once its password has logged in (a wrong password costs no
probe). A login with keys that fails is tried once more with the password; when that works,
the keys were stale (the password was set again, even to the same text: a new salt) and are
dropped, to be probed for again; keys stale twice in a row are given up for a while (a server
that does not keep its verifier); keys refused along with the password (it was changed) are
dropped until the password logs in again. A pool never fails a connection the password
alone would have made.

Nothing new happens when the conninfo carries no password (a passfile, PGPASSWORD), lists
several hosts, names a service, asks for direct TLS, or when libpq is older than 18. The keys
are secrets like the password: they are never logged, and leave this module only in the
conninfo handed to libpq.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg import AsyncConnection, pq

from app.cluster.scram import Keys, Target, keys_for, target_of, usable_password, with_keys
from app.dsn import InvalidDSN, parse_dsn
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
# How long a login waits for another's login with the same keys, at least and at most
# (three times as long as the last one took, in between), before it uses the password.
PATIENCE_S = (0.05, 1.0)

# A login: host, port, user, and a hash of the password (the cache holds no password).
LoginId = tuple[str, int, str, str]


@dataclass
class _Entry:
    keys: Keys | None
    retry_at: float = 0.0  # for an entry without keys: when to probe again


@dataclass(frozen=True)
class Login:
    """One conninfo's login as the cache sees it, and its keys when known."""

    id: LoginId
    target: Target
    password: str
    keys: Keys | None
    keyed: str | None  # the conninfo with the keys in place of the password (a secret)

    def __repr__(self) -> str:
        return f"Login({self.target.user}@{self.target.host}:{self.target.port})"


def refused(error: psycopg.OperationalError) -> bool:
    """True when the server refused the login's credentials (not: unreachable, full)."""
    return "authentication failed" in str(error)


class LoginKeys:
    """The keys of every login of one node's pools.

    A login with no keys yet logs in with its password and, once that worked, has its keys
    probed for in the background for the next connections (a password that never logged
    in gets no probe); a probe that found none is repeated NOT_SCRAM_RETRY_S (FAILED_RETRY_S
    when the server did not answer) later. Keys stay until a login with them fails: they
    are dropped when the password's login then works (stale) or is refused as well (the
    password was changed), and kept when the server could not be reached.
    """

    def __init__(
        self, supervisor: Supervisor | None = None, name: str = "", *, enabled: bool = True
    ) -> None:
        # The probes are the supervisor's tasks when there is one (the service's).
        self._supervisor = supervisor
        self._name = name
        self._entries: dict[LoginId, _Entry] = {}
        self._probes: dict[LoginId, asyncio.Task[None]] = {}
        # Per login: how many keys in a row were found stale before one logged in.
        self._stale: dict[LoginId, int] = {}
        # Per login: the login with its keys under way that others wait on (trial()).
        self._trials: dict[LoginId, asyncio.Future[None]] = {}
        # Per login: how long its last login with the keys took (seconds).
        self._took: dict[LoginId, float] = {}
        self._closed = False
        self.enabled = enabled and pq.version() >= LIBPQ_WITH_KEYS
        self.connection_class = self._connection_class()

    def find(self, conninfo: str) -> Login | None:
        """The login of `conninfo` and its keys, or None when keys are not for it."""
        if not self.enabled or self._closed:
            return None
        try:
            params = parse_dsn(conninfo)
        except InvalidDSN:
            return None
        password = params.get("password", "")
        if not usable_password(password) or "scram_client_key" in params:
            return None
        target = target_of(params)
        if target is None:
            return None
        digest = hashlib.sha256(password.encode()).hexdigest()
        login: LoginId = (target.host, target.port, target.user, digest)
        entry = self._entries.get(login)
        keys = entry.keys if entry is not None else None
        keyed = with_keys(params, keys) if keys is not None else None
        return Login(login, target, password, keys, keyed)

    async def choose(self, conninfo: str) -> tuple[Login | None, asyncio.Future[None] | None]:
        """The login a new connection of `conninfo` makes (keys or password: Login.keyed),
        and the trial it is, to resolve once its outcome is known (trial())."""
        login = self.find(conninfo)
        if login is None or login.keyed is None:
            return login, None
        outcome = await self.trial(login)
        if outcome is False:  # another's trial of these keys is slow: the password
            return dataclasses.replace(login, keys=None, keyed=None), None
        if outcome is True:  # another's trial of these keys is over
            return self.find(conninfo), None
        return login, outcome

    def uses_keys(self, conninfo: str) -> bool:
        """True when new connections of `conninfo` log in with keys now."""
        found = self.find(conninfo)
        return found is not None and found.keys is not None

    def password_worked(self, login: Login) -> None:
        """The password logged in: probe for the keys, unless a probe runs or ran lately."""
        entry = self._entries.get(login.id)
        if login.id in self._probes or self._closed:
            return
        if entry is None or (entry.keys is None and time.monotonic() >= entry.retry_at):
            self._start_probe(login)

    def worked(self, login: Login, took: float) -> None:
        """The keys logged in, in `took` seconds."""
        self._stale.pop(login.id, None)
        self._took[login.id] = took

    def failed(self, login: Login) -> bool:
        """A login with the keys failed (not a timeout): no connection is given them from
        now on, so those waiting on it (trial()) and those to come use the password. True
        for the one that found it first, which then says stale() or refused()."""
        if not self._holds(login):
            return False  # another connection found them failing first
        del self._entries[login.id]
        return True

    async def trial(self, login: Login) -> asyncio.Future[None] | bool:
        """Before a login with the keys: while another one with the same keys is under way,
        wait for its outcome, True (find() again: the keys are gone if it failed), or for
        three times as long as a login with them last took (50 ms to 1 s), False (log in
        with the password: a refusal under auth_delay takes its delay); else the future to
        resolve once this one's outcome is known. So a password set again on the server (a
        new salt) costs one refused login, not one per connection being opened at the
        time (pass 46: auth_delay delays each, and credcheck-like tools count them)."""
        pending = self._trials.get(login.id)
        if pending is None:
            mine = self._trials[login.id] = asyncio.get_running_loop().create_future()
            return mine
        patience = min(max(3 * self._took.get(login.id, 0.0), PATIENCE_S[0]), PATIENCE_S[1])
        try:
            async with asyncio.timeout(patience):
                await asyncio.shield(pending)
        except TimeoutError:
            return False
        return True

    def tried(self, login: Login, mine: asyncio.Future[None]) -> None:
        """The trial's outcome is known (failed() already said, if it failed)."""
        if self._trials.get(login.id) is mine:
            del self._trials[login.id]
        if not mine.done():
            mine.set_result(None)

    def stale(self, login: Login) -> None:
        """The keys failed where the password logged in: probe again (unless that was the
        case of the last keys too: then the password for GIVE_UP_S)."""
        in_a_row = self._stale[login.id] = self._stale.get(login.id, 0) + 1
        if in_a_row < STALE_IN_A_ROW:
            logger.info("SCRAM keys for %s were stale (password set again?)", login.target.user)
            self.password_worked(login)
            return
        self._entries[login.id] = _Entry(None, time.monotonic() + GIVE_UP_S)
        self._stale.pop(login.id, None)
        logger.warning(
            "SCRAM keys for %s were stale %d times in a row: logging in with the password for %g s",
            login.target.user,
            in_a_row,
            GIVE_UP_S,
        )

    def refused(self, login: Login) -> None:
        """The keys and then the password were refused: the password was changed. Keys are
        probed for again once the password logs in."""
        self._stale.pop(login.id, None)

    def _holds(self, login: Login) -> bool:
        entry = self._entries.get(login.id)
        return entry is not None and entry.keys is not None and entry.keys == login.keys

    def _start_probe(self, login: Login) -> None:
        work = self._probe(login)
        if self._supervisor is None:
            self._probes[login.id] = asyncio.get_running_loop().create_task(work)
            return
        try:
            name = f"scram-probe-{self._name}" if self._name else "scram-probe"
            self._probes[login.id] = self._supervisor.spawn(work, name, log_failure=False)
        except RuntimeError:
            pass  # the supervisor is closed: the service is stopping

    async def _probe(self, login: Login) -> None:
        target = login.target
        found: Keys | bool
        try:
            found = await keys_for(target, login.password)
        except Exception as exc:  # a task of its own: nobody else would see it
            logger.debug("no SCRAM keys for %s: %s", target.user, type(exc).__name__)
            found = False
        finally:
            self._probes.pop(login.id, None)
        if isinstance(found, Keys):
            redactor.add(found.client, found.server)  # never logged; scrubbed all the same
            self._entries[login.id] = _Entry(found)
            logger.debug("SCRAM keys ready for %s at %s:%s", target.user, target.host, target.port)
        else:
            retry = NOT_SCRAM_RETRY_S if found else FAILED_RETRY_S
            self._entries[login.id] = _Entry(None, time.monotonic() + retry)

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
                login, mine = await logins.choose(conninfo)
                if login is None or login.keyed is None:
                    conn = await super().connect(conninfo, **kwargs)
                    if login is not None:
                        logins.password_worked(login)
                    return conn
                return await cls._with_keys(conninfo, login, mine, kwargs)

            @classmethod
            async def _with_keys(
                cls,
                conninfo: str,
                login: Login,
                mine: asyncio.Future[None] | None,
                kwargs: dict[str, Any],
            ) -> Self:
                assert login.keyed is not None
                first = False
                started = time.monotonic()
                try:
                    conn = await super().connect(login.keyed, **kwargs)
                except psycopg.errors.ConnectionTimeout:
                    raise  # the server did not answer: neither would it to the password
                except psycopg.OperationalError:
                    first = logins.failed(login)  # (outside the handler below: no chaining)
                else:
                    logins.worked(login, time.monotonic() - started)
                    return conn
                finally:
                    if mine is not None:
                        logins.tried(login, mine)
                try:
                    conn = await super().connect(conninfo, **kwargs)
                except psycopg.OperationalError as exc:
                    if first and refused(exc):
                        logins.refused(login)
                    raise
                if first:
                    logins.stale(login)
                return conn

        return KeyedConnection
