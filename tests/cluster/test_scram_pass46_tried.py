"""Pass 46 on the SCRAM keys (app/cluster/scram_keys.py): what held against the real servers.

- PgBouncer 1.18 whose auth_file holds the SCRAM secrets copied from pg_authid: the probe
  through it gives the same salt twice (the stored verifier's), the keys are derived, and
  they log in through it (PgBouncer passes the ClientKey on to the server); a pool's
  connections are made with them and nothing fails. (Measured, not kept as a test: after
  the server's password was set again and the auth_file re-synced from pg_authid, RELOAD and
  RECONNECT, PgBouncer 1.18 went on failing its server logins, 15 s a client, for the
  password alone (keys off) just as with the keys: PgBouncer's own cached ClientKey, not the
  keys'.)
- Kill -9 of the primary and promotion of the mirror: the mirror's pools had their keys
  (probed at the mirror's own host/port), the promoted node's new connections log in with
  them, the mirror refused no login, no read failed, and writes came back 0.18-0.22 s after
  promote() began, as with the keys off (0.18-0.21 s, the test's "password" case).
- A frozen (SIGSTOP) server: a keyed login fails after one connect_timeout (2 s, as the
  password alone: ConnectionTimeout is not retried with the password), the probe is bounded
  by connect_timeout plus its 1 s close, the keys are kept, and the event loop never stalled
  more than 0.25 s meanwhile (the probe is a task of its own; the health monitor's logins
  do not use the keys at all).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.cluster import scram_keys
from app.cluster.scram import Keys, keys_for
from app.cluster.scram_keys import LoginKeys
from app.devdb import SERVICE, SUPERUSER, LocalPair
from app.dsn import parse_dsn
from tests.cluster.test_failover import FAILOVER_SETTINGS, Load, kill_and_promote, prepare
from tests.cluster.test_scram_keys import client_key_of, keyed_pool, probed_twice, role_dsn
from tests.conftest import PairFactory, login_role, serving_ready, settings_for
from tests.pgbouncer import LocalPgBouncer
from tests.waiting import eventually


class ScramSecretsBouncer(LocalPgBouncer):
    """LocalPgBouncer whose auth_file holds the users' pg_authid SCRAM secrets."""

    def _private(self, name: str, text: str) -> Path:
        if name == "userlist.txt":
            with self.pair.primary.connect() as conn:
                rows = conn.execute(
                    "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                    [[SUPERUSER, SERVICE]],
                ).fetchall()
            text = "".join(f'"{user}" "{secret}"\n' for user, secret in rows)
            assert all(secret.startswith("SCRAM-SHA-256$") for _, secret in rows)
        return super()._private(name, text)


@pytest.fixture
def scram_bouncer(pair: LocalPair, work_dir: Path) -> Iterator[ScramSecretsBouncer]:
    folder = work_dir / f"pgbouncer-scram-{uuid.uuid4().hex[:6]}"
    pgbouncer = ScramSecretsBouncer(pair, folder)
    with pgbouncer:
        yield pgbouncer


async def test_pgbouncer_with_scram_secrets_passes_the_keys_through(
    scram_bouncer: ScramSecretsBouncer,
) -> None:
    dsn = scram_bouncer.dsn(user=SERVICE)
    target, first, second = await probed_twice(dsn)
    assert first is not None and first == second
    keys = await keys_for(target, parse_dsn(dsn)["password"])
    assert isinstance(keys, Keys)
    async with keyed_pool(dsn) as (pool, logins):
        await eventually(lambda: logins.uses_keys(dsn), "the keys")
        started = time.monotonic()
        for _ in range(5):
            await pool.drain()
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT current_user")
                assert await cur.fetchone() == (SERVICE,)
                assert client_key_of(conn) == (keys.client, b"")
        assert time.monotonic() - started < 5
        assert pool.get_stats().get("connections_errors", 0) == 0
    log = scram_bouncer.log_path.read_text(errors="replace")
    assert "password authentication failed" not in log
    assert "SASL authentication failed" not in log


def refusals(path: Path) -> int:
    return path.read_text(errors="replace").count("password authentication failed")


@pytest.mark.parametrize("keys", [True, False], ids=["keys", "password"])
async def test_kill_and_promote_the_promoted_node_logs_in_with_its_keys(
    make_pair: PairFactory, monkeypatch: pytest.MonkeyPatch, keys: bool
) -> None:
    # The same failover with the keys off (as before the change), for the times to compare.
    if not keys:
        monkeypatch.setattr(scram_keys, "LIBPQ_WITH_KEYS", 10**9)
    own = make_pair()
    prepare(own)
    async with serving_ready(settings_for(own, **FAILOVER_SETTINGS)) as (app, client):
        cluster = app.state.cluster
        mirror = next(n for n in cluster.nodes if n.name == "mirror")
        if keys:
            await eventually(lambda: mirror.scram.uses_keys(mirror.dsn), "the mirror's keys")
        async with Load(client) as load:
            promoted = await kill_and_promote(own, cluster)
        await mirror.drain()
        async with mirror.pool.connection() as conn:
            key: Any = client_key_of(conn)
        assert (key[0] is not None and key[1] == b"") == keys
    ok_after = [w.ended for w in load.writes() if w.status == 200 and w.started > promoted]
    assert ok_after
    back_s = min(ok_after) - promoted
    print(f"{keys=} writes back {back_s:.3f} s after the promotion began")
    assert back_s < 2.0, back_s
    assert refusals(own.mirrors[0].log_path) == 0
    assert [o for o in load.reads() if o.status != 200] == []


async def test_a_frozen_node_costs_one_connect_timeout_and_stalls_nothing(
    make_pair: PairFactory,
) -> None:
    own = make_pair(mirrors=0)
    name, password = login_role(own, "mp_frozen")
    dsn = role_dsn(own, name, password, connect_timeout=1)
    logins = LoginKeys()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    try:
        await (await logins.connection_class.connect(dsn)).close()
        await eventually(lambda: logins.uses_keys(dsn), "the keys")
        login = logins.find(dsn)
        assert login is not None
        own.primary.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.ConnectionTimeout):
                await logins.connection_class.connect(dsn)
            keyed_s = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(psycopg.errors.ConnectionTimeout):
                await psycopg.AsyncConnection.connect(dsn)
            plain_s = time.monotonic() - started
            started = time.monotonic()
            assert await keys_for(login.target, password) is False
            probe_s = time.monotonic() - started
        finally:
            own.primary.thaw()
        # One connect_timeout (libpq's and psycopg's least: 2 s), as the password alone,
        # not one for the keys and one more for the password; the
        # probe bounded by it too (plus the 1 s it gives a polite close); the keys kept.
        assert keyed_s < plain_s + 0.5 < 3, (keyed_s, plain_s)
        assert probe_s < plain_s + 1.5, (probe_s, plain_s)
        assert logins.uses_keys(dsn)
        conn = await logins.connection_class.connect(dsn)
        assert client_key_of(conn)[0] is not None
        await conn.close()
    finally:
        stop.set()
        await tick
        await logins.close()
    assert max(gaps) < 0.25, max(gaps)
