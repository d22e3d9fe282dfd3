"""CPU of the event loop's thread per new pool connection: logging in with the password (libpq
runs PBKDF2 on that thread, holding the GIL) against logging in with the SCRAM keys
(app/cluster/scram_keys.py). A figure, not a test: `python -m tests.bench.scram_connect
[ROUNDS]` starts a primary of its own (about 5 s) and prints a Markdown table.

Each round opens a pool of POOL_SIZE connections (waiting until they are all made) and closes
it; the figure is the loop thread's CPU time (time.thread_time()) per connection, pool work
included, median over the rounds. The server's own work (a backend per connection, its side
of SCRAM) is on other cores and not counted.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from app.cluster.scram import Keys, keys_for, target_of
from app.cluster.scram_keys import LoginKeys
from app.devdb import LocalPair
from app.dsn import parse_dsn

POOL_SIZE = 10
ROUNDS = 30


async def cpu_per_connect(
    dsn: str, connection_class: type[psycopg.AsyncConnection[Any]], rounds: int
) -> list[float]:
    """The loop thread's CPU milliseconds per connection, one figure per round."""
    figures = []
    for _ in range(rounds):
        started = time.thread_time()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            connection_class=connection_class,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True},
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        await pool.close()
        figures.append((time.thread_time() - started) * 1000 / POOL_SIZE)
    return figures


async def probe_cost(dsn: str, rounds: int) -> list[float]:
    """The loop thread's CPU milliseconds of one login's probes and derivation (PBKDF2 runs
    in a worker thread, not counted), once per login."""
    params = parse_dsn(dsn)
    target = target_of(params)
    assert target is not None
    figures = []
    for _ in range(rounds):
        started = time.thread_time()
        assert isinstance(await keys_for(target, params["password"]), Keys)
        figures.append((time.thread_time() - started) * 1000)
    return figures


async def measure(dsn: str, rounds: int) -> dict[str, list[float]]:
    probes = await probe_cost(dsn, rounds)
    logins = LoginKeys()
    # The first connection logs in with the password and starts the probe.
    await (await logins.connection_class.connect(dsn)).close()
    deadline = time.monotonic() + 10
    while not logins.uses_keys(dsn):
        if time.monotonic() > deadline:
            raise SystemExit("no SCRAM keys: is libpq 18 or later bundled?")
        await asyncio.sleep(0.01)
    figures: dict[str, list[float]] = {"password": [], "keys": []}
    for _ in range(2):  # interleaved, so a neighbour's load falls on both
        figures["password"] += await cpu_per_connect(dsn, psycopg.AsyncConnection, rounds // 2)
        figures["keys"] += await cpu_per_connect(dsn, logins.connection_class, rounds // 2)
    await logins.close()
    figures["probe + keys, once per login"] = probes
    return figures


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS
    with tempfile.TemporaryDirectory(prefix="mirrorpool-scram-") as folder:
        base = Path(folder)
        base.chmod(0o755)
        with LocalPair(base / "pair", mirrors=0) as pair:
            name, password = "bench_scram", secrets.token_urlsafe(12)
            with pair.primary.connect() as conn:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(name), sql.Literal(password)
                    )
                )
            dsn = psycopg.conninfo.make_conninfo(
                pair.primary.dsn(password=False), user=name, password=password
            )
            figures = asyncio.run(measure(dsn, rounds))
    print(f"CPU of the loop's thread per pool connection ({rounds} rounds of {POOL_SIZE})\n")
    print("| login | median ms | min ms | max ms |")
    print("|---|---|---|---|")
    for login, values in figures.items():
        print(
            f"| {login} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
