"""`make bench-failover`: what clients see when the primary is killed, frozen or stopped.

For each fault, a fresh primary+mirror pair takes a steady load (8 readers, 2 writers) through
mirrorpool, then through Pgpool-II tuned to its fastest (1 s health checks, no retries,
failover on backend error, promotion on failover). Reported: the time from the fault to the
first read answered after it, failed reads and writes, and the longest request. Results are
appended to tests/bench/results/failover.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.devdb import OWNER, SERVICE, LocalPair, free_ports
from tests.bench.__main__ import RESULTS

RUN_S = 7.0
FAULT_AT_S = 2.0


@dataclass
class Result:
    """One target under one fault."""

    target: str
    fault: str
    first_read_s: float | None
    read_outage_s: float
    writes_back_s: float | None
    failed_reads: int
    failed_writes: int
    reads: int
    writes: int
    longest_s: float


class Client:
    """Load through one target: run_read/run_write raise on failure."""

    async def read(self) -> None:
        raise NotImplementedError

    async def write(self, ident: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class HttpClient(Client):
    """Through mirrorpool's HTTP API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    async def read(self) -> None:
        r = await self.http.post(
            "/v1/query", json={"sql": "SELECT count(*) FROM t", "read_only": True,
                               "timeout_ms": 5000},
        )  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(r.status_code)

    async def write(self, ident: int) -> None:
        r = await self.http.post(
            "/v1/query", json={"sql": "INSERT INTO t VALUES ($1)", "params": [ident],
                               "timeout_ms": 5000},
        )  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(r.status_code)

    async def close(self) -> None:
        await self.http.aclose()


class PgClient(Client):
    """Straight to a PostgreSQL-protocol endpoint (Pgpool-II), reconnecting after errors
    as an application would."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def _conn(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=5
            )
        return self.conn

    async def _run(self, sql: str, params: list[Any] | None) -> None:
        try:
            conn = await self._conn()
            await asyncio.wait_for(conn.execute(sql, params), 5)
        except BaseException:
            if self.conn is not None:
                await self.conn.close()
            self.conn = None
            raise

    async def read(self) -> None:
        await self._run("SELECT count(*) FROM t", None)

    async def write(self, ident: int) -> None:
        await self._run("INSERT INTO t VALUES (%s)", [ident])

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


async def load(make_client: Callable[[], Client], fault: Callable[[], None]) -> dict[str, Any]:
    """Run the load, apply the fault at FAULT_AT_S, and tally what the clients saw."""
    outcomes: list[tuple[str, float, float, bool]] = []
    stop_at = time.monotonic() + RUN_S
    ids = iter(range(1_000_000))

    async def loop(kind: str) -> None:
        client = make_client()
        try:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    if kind == "read":
                        await asyncio.wait_for(client.read(), 10)
                    else:
                        await asyncio.wait_for(client.write(next(ids)), 10)
                    ok = True
                except Exception:
                    ok = False
                outcomes.append((kind, started, time.monotonic(), ok))
                await asyncio.sleep(0.01)
        finally:
            await client.close()

    async def inject() -> float:
        await asyncio.sleep(FAULT_AT_S)
        await asyncio.get_running_loop().run_in_executor(None, fault)
        # Counted from the moment the fault is complete (every process killed or stopped).
        return time.monotonic()

    tasks: list[Awaitable[Any]] = [loop("read") for _ in range(8)]
    tasks += [loop("write") for _ in range(2)]
    fault_at, *_ = await asyncio.gather(inject(), *tasks)
    after = [o for o in outcomes if o[3] and o[0] == "read" and o[1] >= fault_at]
    troubled = [o[2] for o in outcomes if o[0] == "read" and o[2] >= fault_at
                and (not o[3] or o[2] - o[1] > 0.5)]  # fmt: skip
    writes_back = [o[2] for o in outcomes if o[0] == "write" and o[3] and o[1] >= fault_at]
    return {
        "first_read_s": round(min(o[2] for o in after) - fault_at, 3) if after else None,
        "read_outage_s": round(max(troubled) - fault_at, 3) if troubled else 0.0,
        "writes_back_s": round(min(writes_back) - fault_at, 3) if writes_back else None,
        "failed_reads": sum(1 for o in outcomes if o[0] == "read" and not o[3]),
        "failed_writes": sum(1 for o in outcomes if o[0] == "write" and not o[3]),
        "reads": sum(1 for o in outcomes if o[0] == "read"),
        "writes": sum(1 for o in outcomes if o[0] == "write"),
        "longest_s": round(max(o[2] - o[1] for o in outcomes), 2),
    }


def make_pair(base: Path, name: str) -> LocalPair:
    pair = LocalPair(base / name)
    pair.start()
    with pair.primary.connect(user=OWNER) as conn:  # as a migration would
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    return pair


FAULTS: dict[str, Callable[[LocalPair], None]] = {
    "kill -9": lambda p: p.primary.kill(),
    "SIGSTOP": lambda p: p.primary.freeze(),
    "clean stop": lambda p: p.primary.stop("fast"),
}


def run_mirrorpool(base: Path, fault: str) -> Result:
    pair = make_pair(base, f"mp-{fault.replace(' ', '')}")
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")} | {
        "MIRRORPOOL_PRIMARY_DSN": pair.primary.dsn(user=SERVICE),
        "MIRRORPOOL_MIRROR_DSN": pair.mirrors[0].dsn(user=SERVICE),
        "MIRRORPOOL_PORT": str(port),
        "MIRRORPOOL_HEALTH_INTERVAL": "0.2",
        "MIRRORPOOL_HEALTH_TIMEOUT": "0.5",
        "MIRRORPOOL_HEALTH_THRESHOLD": "2",
        "MIRRORPOOL_LOG_LEVEL": "warning",
        "MIRRORPOOL_AUTH": "disabled",
        "MIRRORPOOL_POOL_MAX_WAITING": "0",
        # Pgpool-II promotes on failover here, so mirrorpool does too (single instance).
        "MIRRORPOOL_PROMOTE_AFTER_S": "0.5",
    }
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready")
        figures = asyncio.run(
            load(lambda: HttpClient(f"http://127.0.0.1:{port}"), lambda: FAULTS[fault](pair))
        )
    finally:
        proc.terminate()
        proc.wait(30)
        pair.primary.thaw()
        pair.destroy()
    return Result("mirrorpool", fault, **figures)


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


PGPOOL_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
pcp_listen_addresses = ''
pcp_port = {pcp_port}
unix_socket_directories = '{dir}'
pcp_socket_dir = '{dir}'
backend_clustering_mode = 'streaming_replication'
backend_hostname0 = '127.0.0.1'
backend_port0 = {primary}
backend_weight0 = 1
backend_flag0 = 'ALLOW_TO_FAILOVER'
backend_hostname1 = '127.0.0.1'
backend_port1 = {mirror}
backend_weight1 = 1
backend_flag1 = 'ALLOW_TO_FAILOVER'
enable_pool_hba = off
pool_passwd = '{dir}/pool_passwd'
allow_clear_text_frontend_auth = on
num_init_children = 16
max_pool = 1
load_balance_mode = on
health_check_period = 1
health_check_timeout = 1
health_check_max_retries = 0
health_check_user = 'postgres'
health_check_password = '{password}'
sr_check_period = 1
sr_check_user = 'postgres'
sr_check_password = '{password}'
failover_on_backend_error = on
failover_command = '{dir}/failover.sh %d %m %H %r'
search_primary_node_timeout = 10
pid_file_name = '{dir}/pgpool.pid'
logdir = '{dir}'
log_min_messages = warning
"""

FAILOVER_SH = """#!/bin/sh
# Pgpool-II's failover_command: promote the new main node when the primary fails.
failed=$1; new_id=$2; host=$3; port=$4
[ "$failed" = "0" ] || exit 0
PGPASSWORD='{password}' psql -h 127.0.0.1 -p {mirror} -U postgres -d postgres \\
    -c 'SELECT pg_promote(true, 30)' >/dev/null 2>&1
exit 0
"""


def run_pgpool(base: Path, fault: str) -> Result | None:
    pgpool = shutil.which("pgpool")
    if pgpool is None:
        return None
    pair = make_pair(base, f"pp-{fault.replace(' ', '')}")
    folder = base / f"pgpool-{fault.replace(' ', '')}"
    folder.mkdir()
    port, pcp_port = free_ports(2)
    values = {
        "port": port, "pcp_port": pcp_port, "dir": folder, "primary": pair.primary.port,
        "mirror": pair.mirrors[0].port, "password": pair.password,
    }  # fmt: skip
    (folder / "pgpool.conf").write_text(PGPOOL_CONF.format(**values))
    (folder / "pool_passwd").write_text(f"postgres:TEXT{pair.password}\n")
    (folder / "pcp.conf").write_text("")
    script = folder / "failover.sh"
    script.write_text(FAILOVER_SH.format(**values))
    script.chmod(0o755)
    log = (folder / "pgpool.log").open("w")
    proc = subprocess.Popen(
        [pgpool, "-n", "-f", str(folder / "pgpool.conf"), "-F", str(folder / "pcp.conf")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={pair.password}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.Error:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"pgpool did not start: {(folder / 'pgpool.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        figures = asyncio.run(load(lambda: PgClient(dsn), lambda: FAULTS[fault](pair)))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        pair.primary.thaw()
        pair.destroy()
    return Result("Pgpool-II 1 s checks", fault, **figures)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="mirrorpool-failover-"))
    base.chmod(0o755)
    results: list[Result] = []
    try:
        for fault in FAULTS:
            results.append(run_mirrorpool(base, fault))
            print(f"bench-failover: {results[-1]}", flush=True)
            pgpool = run_pgpool(base, fault)
            if pgpool is not None:
                results.append(pgpool)
                print(f"bench-failover: {results[-1]}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lines = [
        "# failover benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: 8 readers and 2 writers for "
        f"{RUN_S:g} s, the fault at {FAULT_AT_S:g} s; mirrorpool with "
        "MIRRORPOOL_HEALTH_INTERVAL=0.2, HEALTH_TIMEOUT=0.5, HEALTH_THRESHOLD=2, "
        "PROMOTE_AFTER_S=0.5; Pgpool-II with health_check_period=1, health_check_timeout=1, "
        "health_check_max_retries=0, failover_on_backend_error=on and a failover_command that "
        "promotes the mirror. 'Reads disturbed until': the end of the last read after the "
        "fault that failed or took over 0.5 s.",
        "",
        "| fault | target | first read after the fault (s) | reads disturbed until (s) "
        "| writes back after (s) | failed reads | failed writes | reads | writes "
        "| longest request (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first = f"{r.first_read_s}" if r.first_read_s is not None else "none"
        back = f"{r.writes_back_s}" if r.writes_back_s is not None else "never"
        lines.append(
            f"| {r.fault} | {r.target} | {first} | {r.read_outage_s} | {back} "
            f"| {r.failed_reads} | {r.failed_writes} "
            f"| {r.reads} | {r.writes} | {r.longest_s} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
