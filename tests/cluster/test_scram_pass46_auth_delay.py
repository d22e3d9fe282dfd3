"""A password set again (ALTER ROLE ... PASSWORD with the same text, as a deploy or a
configuration tool does) on a server with auth_delay (the contrib module that delays
every refused login, against password guessing): every connection being opened with the
old keys, all at once, is refused and waits out the delay before the password logs in.

Measured here (auth_delay.milliseconds = 600, four connections opened at once, as a pool's
workers and role pools do after a drain or a failover): with the keys, 4 logins refused
and every one of the four connections took 0.63-0.64 s; with the password alone (keys off,
the same test's other case, which passes), none refused, all four in 0.011-0.020 s. A
password changed to one the service does not know costs each connection in flight two
refusals (keys, then password) and two delays instead of one, by the same cause. The same burst of
refusals is what fail2ban-style log watchers and credcheck's max_auth_failure (which
bans the role) count.

Root cause: LoginKeys.connection_class.connect() uses the cached keys for every connection
that starts before one of them has found the keys stale; the keys are dropped only after
the failing attempt's password login has worked (stale()), so each connection in flight,
and each one started meanwhile, pays a refused login.

Suggested fix: single-flight the keys after a change is possible: once a keyed login is
refused, take the keys out at once (before the password attempt), and let connections that
started with the same keys and have not yet logged in use the password (or wait for the
first one's answer) instead of each trying the old keys; at most one refusal and one delay
per stale event.

Fixed (app/cluster/scram_keys.py trial, failed): a login with the keys is a trial while it
runs; the others that start with the same keys wait for its outcome, for three times as long
as such a login last took (50 ms to 1 s), then use the password. A trial that fails takes
the keys out at once, before its own password login. Measured after: 1 refusal, one
connection at 0.61 s, and three at 0.07-0.08 s (the 50 ms wait, then the password).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from app.cluster import scram_keys
from app.cluster.scram_keys import LoginKeys
from tests.cluster.test_scram_keys import auth_failures, role_dsn, set_password
from tests.conftest import PairFactory, login_role
from tests.waiting import eventually

DELAY_MS = 600
CONCURRENT = 4


async def open_all(logins: LoginKeys, dsn: str) -> list[float]:
    """Open CONCURRENT connections at once: each one's time, closed after."""

    async def one() -> float:
        started = time.monotonic()
        conn = await logins.connection_class.connect(dsn)
        took = time.monotonic() - started
        await conn.close()
        return took

    return list(await asyncio.gather(*(one() for _ in range(CONCURRENT))))


@pytest.mark.parametrize("keys", [True, False], ids=["keys", "password"])
async def test_a_password_set_again_delays_one_connection_at_most(
    make_pair: PairFactory, monkeypatch: pytest.MonkeyPatch, keys: bool
) -> None:
    own = make_pair(mirrors=0)
    with (own.primary.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(
            f"shared_preload_libraries = 'auth_delay'\nauth_delay.milliseconds = {DELAY_MS}\n"
        )
    own.primary.restart()
    name, password = login_role(own, "mp_delay")
    dsn = role_dsn(own, name, password)
    if not keys:  # as before the change
        monkeypatch.setattr(scram_keys, "LIBPQ_WITH_KEYS", 10**9)
    logins = LoginKeys()
    try:
        await (await logins.connection_class.connect(dsn)).close()
        if keys:
            await eventually(lambda: logins.uses_keys(dsn), "the keys")
        await open_all(logins, dsn)  # warm
        set_password(own, name, password)
        refused_before = auth_failures(own, name)
        times = await open_all(logins, dsn)
        refused = auth_failures(own, name) - refused_before
        print(f"{keys=}: {refused} refused, connections took {sorted(times)}")
        delayed = [t for t in times if t >= DELAY_MS / 1000]
        assert refused <= 1, (refused, times)
        assert len(delayed) <= 1, times
    finally:
        await logins.close()
