"""The ceiling for a Python client: a plain psycopg AsyncConnectionPool loop, one process.

Usage: python -m tests.bench.raw_loop DSN WORKLOAD CONCURRENCY POOL_SIZE SECONDS [unprepared]
`unprepared` turns psycopg's server-side prepared statements off, as a client of PgBouncer
in transaction mode must (PgBouncer before 1.21 cannot carry them).
Prints one JSON object: requests, errors, seconds, p50/p95/p99 latency in ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import psycopg
import uvloop
from psycopg_pool import AsyncConnectionPool

from tests.bench.workloads import ROWS, WORKLOADS


async def main(
    dsn: str, workload_name: str, concurrency: int, size: int, seconds: float, prepare: bool
) -> None:
    workload = next(w for w in WORKLOADS if w.name == workload_name)
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        dsn,
        min_size=size,
        max_size=size,
        open=False,
        kwargs={
            "autocommit": True,
            "cursor_factory": psycopg.AsyncRawCursor,
            **({} if prepare else {"prepare_threshold": None}),
        },
    )
    await pool.open(wait=True)
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def worker(seed: int) -> None:
        nonlocal errors
        n = seed
        while time.monotonic() < stop:
            n = (n * 7919 + 1) % ROWS + 1
            started = time.perf_counter()
            try:
                async with pool.connection() as conn:
                    if workload.transaction:
                        async with conn.transaction():
                            for sql in workload.statements:
                                cur = await conn.execute(sql, [n])
                                if cur.description:
                                    await cur.fetchall()
                    else:
                        cur = await conn.execute(workload.statements[0], [n])
                        if cur.description:
                            await cur.fetchall()
            except psycopg.Error:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    await pool.close()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 3)

    print(
        json.dumps(
            {
                "requests": len(latencies),
                "errors": errors,
                "seconds": elapsed,
                "p50_ms": pct(0.50),
                "p95_ms": pct(0.95),
                "p99_ms": pct(0.99),
            }
        )
    )


if __name__ == "__main__":
    dsn, name, conc, size, secs = sys.argv[1:6]
    unprepared = sys.argv[6:7] == ["unprepared"]
    uvloop.run(main(dsn, name, int(conc), int(size), float(secs), not unprepared))
