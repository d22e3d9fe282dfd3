"""`make bench-failover`: what clients see when the primary fails, through three doors.

Two parts, each under a steady load of 8 readers and 2 writers:

- **Faults of a plain primary+mirror pair** (kill -9, SIGSTOP, clean stop of the primary),
  where the door itself promotes the mirror: mirrorpool with MIRRORPOOL_PROMOTE_AFTER_S, and
  Pgpool-II tuned to its fastest (1 s health checks, no retries, failover on backend error,
  a failover_command that promotes the mirror).
- **Events of a real Patroni cluster** (tests/cluster/patroni.py: etcd and two members,
  ttl 10, loop_wait 1): `patronictl switchover`, a crash of the leader's Patroni and
  postmaster, an etcd stall until Patroni demotes the leader. Patroni decides; the doors
  follow: mirrorpool (default settings, one DSN per member), HAProxy with Patroni's REST
  checks (the configuration Patroni's documentation shows, checks every second), and
  Pgpool-II with no failover_command of its own.

Reported per run: failed reads and writes, when writes were back after the fault, how long
after the promotion (its completion as a watcher polling the servers every 5 ms saw it) the
first write succeeded, acknowledged writes missing from the final primary, and the longest
request. Results are written to tests/bench/results/failover.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.devdb import (
    OWNER,
    SERVICE,
    LocalPair,
    _die_with_parent,  # the local pair's own guard against leaked processes
    alive,
    free_ports,
    wait_until,
)
from tests.bench.__main__ import RESULTS
from tests.cluster.load import TABLE_SQL, fresh_table
from tests.cluster.patroni import Member, PatroniCluster
from tests.cluster.watch import RoleWatch

FAULT_AT_S = 2.0
# How long the load goes on after the fault: at least AFTER_S, and until writes have been
# back for AFTER_BACK_S, up to CAP_S (a door whose writes never come back); a fault of the
# plain pair is watched for AFTER_S only, as before.
AFTER_S = 5.0
AFTER_BACK_S = 2.0
CAP_S = 30.0
READERS = 8  # half of them read_only, half plain (no read_only: most clients never set it)
WRITERS = 2


@dataclass
class Result:
    """One door under one event."""

    part: str
    target: str
    fault: str
    read_outage_s: float
    writes_back_s: float | None
    follow_s: float | None
    failed_reads: int
    failed_plain_reads: int
    failed_writes: int
    lost_writes: int
    reads: int
    writes: int
    longest_s: float


class Client:
    """Load through one door: read() and write() raise on failure."""

    async def read(self, plain: bool = False) -> None:
        raise NotImplementedError

    async def write(self, ident: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class HttpClient(Client):
    """Through mirrorpool's HTTP API: read-only reads, plain writes."""

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=10)

    async def read(self, plain: bool = False) -> None:
        body: dict[str, Any] = {"sql": "SELECT count(*) FROM t", "timeout_ms": 5000}
        if not plain:
            body["read_only"] = True
        r = await self.http.post("/v1/query", json=body)
        if r.status_code != 200:
            raise RuntimeError(r.status_code)

    async def write(self, ident: int) -> None:
        r = await self.http.post(
            "/v1/query", json={"sql": "INSERT INTO t (id) VALUES ($1)", "params": [ident],
                               "timeout_ms": 5000},
        )  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(r.status_code)

    async def close(self) -> None:
        await self.http.aclose()


class PgClient(Client):
    """Straight to PostgreSQL-protocol endpoints (Pgpool-II, HAProxy's ports), reconnecting
    after errors as an application would; reads and writes may go to different ports."""

    def __init__(self, read_dsn: str, write_dsn: str | None = None) -> None:
        self.dsns = {"read": read_dsn, "write": write_dsn or read_dsn}
        self.conns: dict[str, psycopg.AsyncConnection[Any] | None] = {"read": None, "write": None}

    async def _run(self, kind: str, sql: str, params: list[Any] | None) -> None:
        conn = self.conns[kind]
        try:
            if conn is None or conn.closed:
                conn = self.conns[kind] = await psycopg.AsyncConnection.connect(
                    self.dsns[kind], autocommit=True, connect_timeout=5
                )
            await asyncio.wait_for(conn.execute(sql, params), 5)
        except BaseException:
            if conn is not None:
                await conn.close()
            self.conns[kind] = None
            raise

    async def read(self, plain: bool = False) -> None:
        # (A PostgreSQL-protocol door knows no read_only: a plain read is the same read.)
        await self._run("read", "SELECT count(*) FROM t", None)

    async def write(self, ident: int) -> None:
        await self._run("write", "INSERT INTO t (id) VALUES (%s)", [ident])

    async def close(self) -> None:
        for conn in self.conns.values():
            if conn is not None:
                await conn.close()


Outcome = tuple[str, float, float, bool, int | None]


async def load(
    make_client: Callable[[], Client],
    fault: Callable[[], None],
    watch: RoleWatch,
    cap: float = CAP_S,
) -> tuple[dict[str, Any], set[int]]:
    """Run the load, apply the fault at FAULT_AT_S, go on for at least AFTER_S and until
    writes have been back AFTER_BACK_S (at most `cap` s), and tally what the clients saw;
    also the ids of the acknowledged writes."""
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    ids = iter(range(1, 10_000_000))

    async def loop(kind: str) -> None:
        client = make_client()
        try:
            while not stop.is_set():
                started = time.monotonic()
                ident = next(ids) if kind == "write" else None
                try:
                    if ident is None:
                        await asyncio.wait_for(client.read(kind == "plain"), 10)
                    else:
                        await asyncio.wait_for(client.write(ident), 10)
                    ok = True
                except Exception:
                    ok = False
                outcomes.append((kind, started, time.monotonic(), ok, ident))  # "plain": a read
                await asyncio.sleep(0.01)
        finally:
            await client.close()

    def back_after(moment: float) -> float | None:
        done = [o[2] for o in outcomes if o[0] == "write" and o[3] and o[1] >= moment]
        return min(done) if done else None

    moments: list[float] = []

    async def inject() -> None:
        await asyncio.sleep(FAULT_AT_S)
        moments.append(time.monotonic())
        await asyncio.get_running_loop().run_in_executor(None, fault)
        # The load goes on for AFTER_S from the moment the fault is complete (killed,
        # stopped, stalled until the leader's demotion, switchover done).
        fault_at = time.monotonic()
        while (waited := time.monotonic() - fault_at) < cap:
            back = back_after(fault_at)
            if waited >= AFTER_S and back is not None and time.monotonic() - back >= AFTER_BACK_S:
                break
            await asyncio.sleep(0.1)
        stop.set()

    loops = [loop("read") for _ in range(READERS // 2)]
    loops += [loop("plain") for _ in range(READERS - READERS // 2)]
    loops += [loop("write") for _ in range(WRITERS)]
    await asyncio.gather(inject(), *loops)
    (fault_started,) = moments
    # Counted from the start of the fault: a switchover, or an etcd stall until the
    # leader's demotion, takes seconds, and clients see its effects before it is complete.
    troubled = [o[2] for o in outcomes if o[0] in ("read", "plain") and o[2] >= fault_started
                and (not o[3] or o[2] - o[1] > 0.5)]  # fmt: skip
    # Writes are back with the first one acknowledged among those sent once they were
    # disturbed (one failed or took over 0.5 s): a write sent just before the fault took
    # effect may still succeed, and says nothing.
    disturbed = [o[1] for o in outcomes if o[0] == "write" and o[1] >= fault_started
                 and (not o[3] or o[2] - o[1] > 0.5)]  # fmt: skip
    back = back_after(min(disturbed)) if disturbed else fault_started
    promotion = watch.last_promotion(fault_started)
    follow = back_after(promotion[1]) if promotion else None
    acknowledged = {o[4] for o in outcomes if o[0] == "write" and o[3] and o[4] is not None}
    figures = {
        "read_outage_s": round(max(troubled) - fault_started, 3) if troubled else 0.0,
        "writes_back_s": round(back - fault_started, 3) if back is not None else None,
        "follow_s": (round(follow - promotion[1], 3) if promotion and follow is not None else None),
        "failed_reads": sum(1 for o in outcomes if o[0] == "read" and not o[3]),
        "failed_plain_reads": sum(1 for o in outcomes if o[0] == "plain" and not o[3]),
        "failed_writes": sum(1 for o in outcomes if o[0] == "write" and not o[3]),
        "reads": sum(1 for o in outcomes if o[0] in ("read", "plain")),
        "writes": sum(1 for o in outcomes if o[0] == "write"),
        "longest_s": round(max(o[2] - o[1] for o in outcomes), 2),
    }
    return figures, acknowledged


def lost(dsns: list[str], acknowledged: set[int]) -> int:
    """Acknowledged writes missing from whichever server accepts writes now."""
    for dsn in dsns:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is None or row[0]:
                    continue
                present = {r[0] for r in conn.execute("SELECT id FROM t").fetchall()}
        except psycopg.Error:
            continue
        return len(acknowledged - present)
    raise RuntimeError("no server accepts writes after the run")


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


@contextlib.contextmanager
def process_group(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    """Run a program in a process group of its own; at the end stop it and every process it
    started (SIGTERM, then SIGKILL for what is left), and wait until none is left."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            # Gone with the bench, even after its kill -9 (one prctl call, as app/devdb/system.py).
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )  # fmt: skip
    try:
        yield proc
    finally:
        group = proc.pid
        members = _group_members(group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        members += _group_members(group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in members), 10, f"{argv[0]}'s processes")


def _group_members(group: int) -> list[int]:
    """Pids of the processes in a process group, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rfind(")") + 2 :].split()[2]) == group:
            found.append(int(stat.parent.name))
    return found


# --- part 1: a plain pair, the door promotes --------------------------------------------


def make_pair(base: Path, name: str) -> LocalPair:
    pair = LocalPair(base / name)
    pair.start()
    with pair.primary.connect(user=OWNER) as conn:  # as a migration would
        conn.execute(TABLE_SQL)
    return pair


PAIR_FAULTS: dict[str, Callable[[LocalPair], None]] = {
    "kill -9": lambda p: p.primary.kill(),
    "SIGSTOP": lambda p: p.primary.freeze(),
    "clean stop": lambda p: p.primary.stop("fast"),
}


def mirrorpool_env(primary: str, mirror: str, port: int, **extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")} | {
        "MIRRORPOOL_PRIMARY_DSN": primary,
        "MIRRORPOOL_MIRROR_DSN": mirror,
        "MIRRORPOOL_PORT": str(port),
        "MIRRORPOOL_LOG_LEVEL": "warning",
        "MIRRORPOOL_AUTH": "disabled",
        "MIRRORPOOL_POOL_MAX_WAITING": "0",
        **{f"MIRRORPOOL_{k.upper()}": v for k, v in extra.items()},
    }


def run_mirrorpool_on_pair(base: Path, fault: str) -> Result:
    pair = make_pair(base, f"mp-{fault.replace(' ', '')}")
    port = free_ports(1)[0]
    env = mirrorpool_env(
        pair.primary.dsn(user=SERVICE), pair.mirrors[0].dsn(user=SERVICE), port,
        health_interval="0.2", health_timeout="0.5", health_threshold="2",
        # Pgpool-II promotes on failover here, so mirrorpool does too (single instance).
        promote_after_s="0.5",
    )  # fmt: skip
    dsns = [n.dsn() for n in reversed(pair.nodes)]  # the promoted mirror first
    try:
        with (
            process_group([sys.executable, "-m", "app", "serve"], base / f"mp-{port}.log", env),
            RoleWatch({"mirror": pair.mirrors[0].dsn()}) as watch,
        ):
            wait_http(f"http://127.0.0.1:{port}/health/ready")
            figures, acked = asyncio.run(
                load(lambda: HttpClient(f"http://127.0.0.1:{port}"),
                     lambda: PAIR_FAULTS[fault](pair), watch, AFTER_S)
            )  # fmt: skip
        pair.primary.thaw()
        missing = lost(dsns, acked)
    finally:
        pair.primary.thaw()
        pair.destroy()
    return Result("pair", "mirrorpool", fault, lost_writes=missing, **figures)


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
failover_command = '{failover_command}'
search_primary_node_timeout = 30
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


@contextlib.contextmanager
def pgpool(folder: Path, ports: tuple[int, int], password: str, promotes: bool) -> Any:
    """Pgpool-II in front of two servers; its DSN. With `promotes`, its failover_command
    promotes the second when the first fails; without, it only finds the new primary."""
    binary = shutil.which("pgpool")
    assert binary is not None
    folder.mkdir()
    port, pcp_port = free_ports(2)
    values: dict[str, Any] = {
        "port": port, "pcp_port": pcp_port, "dir": folder, "primary": ports[0],
        "mirror": ports[1], "password": password,
        "failover_command": f"{folder}/failover.sh %d %m %H %r" if promotes else "",
    }  # fmt: skip
    (folder / "pgpool.conf").write_text(PGPOOL_CONF.format(**values))
    (folder / "pool_passwd").write_text(f"postgres:TEXT{password}\n")
    (folder / "pcp.conf").write_text("")
    script = folder / "failover.sh"
    script.write_text(FAILOVER_SH.format(**values))
    script.chmod(0o755)
    argv = [binary, "-n", "-f", str(folder / "pgpool.conf"), "-F", str(folder / "pcp.conf")]
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={password}"
    with process_group(argv, folder / "pgpool.log") as proc:
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
        yield dsn


def run_pgpool_on_pair(base: Path, fault: str) -> Result:
    pair = make_pair(base, f"pp-{fault.replace(' ', '')}")
    ports = (pair.primary.port, pair.mirrors[0].port)
    dsns = [n.dsn() for n in reversed(pair.nodes)]  # the promoted mirror first
    try:
        with (
            pgpool(base / f"pgpool-{fault.replace(' ', '')}", ports, pair.password, True) as dsn,
            RoleWatch({"mirror": pair.mirrors[0].dsn()}) as watch,
        ):
            figures, acked = asyncio.run(
                load(lambda: PgClient(dsn), lambda: PAIR_FAULTS[fault](pair), watch, AFTER_S)
            )
        pair.primary.thaw()
        missing = lost(dsns, acked)
    finally:
        pair.primary.thaw()
        pair.destroy()
    return Result("pair", "Pgpool-II 1 s checks", fault, lost_writes=missing, **figures)


# --- part 2: Patroni decides, the door follows ------------------------------------------


def switchover(cluster: PatroniCluster) -> None:
    cluster.switchover(cluster.replica())


def crash(cluster: PatroniCluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    leader.crash()


def etcd_stall(cluster: PatroniCluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    cluster.freeze_etcd()
    try:
        wait_until(lambda: not writable(leader), 30, "Patroni to demote the leader", 0.05)
    finally:
        cluster.thaw_etcd()


def writable(member: Member) -> bool:
    try:
        with member.connect() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return False
    return bool(row and not row[0])


PATRONI_EVENTS: dict[str, Callable[[PatroniCluster], None]] = {
    "switchover": switchover,
    "leader crash": crash,
    "etcd stall": etcd_stall,
}

HAPROXY_CFG = """
global
    maxconn 200
    pidfile {dir}/haproxy.pid
defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s
listen primary
    bind 127.0.0.1:{write_port}
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{write_servers}
listen reads
    bind 127.0.0.1:{read_port}
    option httpchk OPTIONS /read-only
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{read_servers}
"""


@contextlib.contextmanager
def haproxy(folder: Path, cluster: PatroniCluster) -> Any:
    """HAProxy with Patroni's REST checks: writes to the member whose /primary answers 200,
    reads to any whose /read-only does; (read DSN, write DSN)."""
    binary = shutil.which("haproxy")
    assert binary is not None
    folder.mkdir()
    read_port, write_port = free_ports(2)
    servers = "\n".join(
        f"    server {m.name} 127.0.0.1:{m.pg_port} maxconn 100 check port {m.rest_port}"
        for m in cluster.members
    )
    (folder / "haproxy.cfg").write_text(
        HAPROXY_CFG.format(
            dir=folder, read_port=read_port, write_port=write_port,
            write_servers=servers, read_servers=servers,
        )
    )  # fmt: skip
    argv = [binary, "-db", "-f", str(folder / "haproxy.cfg")]
    password = cluster.passwords["postgres"]

    def dsn(port: int) -> str:
        return f"host=127.0.0.1 port={port} user=postgres dbname=postgres password={password}"

    with process_group(argv, folder / "haproxy.log"):
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(dsn(write_port), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not start") from None
                time.sleep(0.2)
        yield dsn(read_port), dsn(write_port)


def on_patroni(base: Path, cluster: PatroniCluster, target: str, event: str) -> Result:
    """One door under one Patroni event, the cluster made healthy again afterwards."""
    fresh_table(cluster)
    folder = base / f"{target.lower()}-{event.replace(' ', '')}"
    dsns = [m.dsn() for m in cluster.members]
    p0, p1 = cluster.members
    with RoleWatch({m.name: m.dsn() for m in cluster.members}) as watch:
        if target == "mirrorpool":
            port = free_ports(1)[0]
            env = mirrorpool_env(p0.dsn(user=SERVICE), p1.dsn(user=SERVICE), port)
            argv = [sys.executable, "-m", "app", "serve"]
            folder.mkdir()
            with process_group(argv, folder / "mirrorpool.log", env):
                wait_http(f"http://127.0.0.1:{port}/health/ready")
                figures, acked = asyncio.run(
                    load(lambda: HttpClient(f"http://127.0.0.1:{port}"),
                         lambda: PATRONI_EVENTS[event](cluster), watch)
                )  # fmt: skip
        elif target == "HAProxy":
            with haproxy(folder, cluster) as (read_dsn, write_dsn):
                figures, acked = asyncio.run(
                    load(lambda: PgClient(read_dsn, write_dsn),
                         lambda: PATRONI_EVENTS[event](cluster), watch)
                )  # fmt: skip
        else:
            ports = (p0.pg_port, p1.pg_port)
            with pgpool(folder, ports, cluster.passwords["postgres"], False) as dsn:
                figures, acked = asyncio.run(
                    load(lambda: PgClient(dsn), lambda: PATRONI_EVENTS[event](cluster), watch)
                )
    for member in cluster.members:
        member.start()  # the crashed one rejoins (pg_rewind); the others run already
    cluster.wait_healthy(120)
    missing = lost(dsns, acked)
    return Result("patroni", target, event, lost_writes=missing, **figures)


PATRONI_TARGETS = ["mirrorpool", "HAProxy", "Pgpool-II"]


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="mirrorpool-failover-"))
    base.chmod(0o755)
    results: list[Result] = []
    have_pgpool = shutil.which("pgpool") is not None
    try:
        for fault in PAIR_FAULTS:
            results.append(run_mirrorpool_on_pair(base, fault))
            print(f"bench-failover: {results[-1]}", flush=True)
            if have_pgpool:
                results.append(run_pgpool_on_pair(base, fault))
                print(f"bench-failover: {results[-1]}", flush=True)
        with PatroniCluster(base / "patroni") as cluster:
            for event in PATRONI_EVENTS:
                for target in PATRONI_TARGETS:
                    if target == "HAProxy" and shutil.which("haproxy") is None:
                        continue
                    if target == "Pgpool-II" and not have_pgpool:
                        continue
                    results.append(on_patroni(base, cluster, target, event))
                    print(f"bench-failover: {results[-1]}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lines = report(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def report(results: list[Result]) -> list[str]:
    header = (
        "| fault | target | failed reads (read_only) | failed reads (plain) | failed writes "
        "| writes back after (s) "
        "| first write after the promotion (s) | lost acknowledged writes "
        "| reads disturbed until (s) | reads | writes | longest request (s) |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|"

    def rows(part: str) -> list[str]:
        out = []
        for r in (r for r in results if r.part == part):
            back = f"{r.writes_back_s}" if r.writes_back_s is not None else "never"
            follow = f"{r.follow_s}" if r.follow_s is not None else "-"
            out.append(
                f"| {r.fault} | {r.target} | {r.failed_reads} | {r.failed_plain_reads} "
                f"| {r.failed_writes} | {back} "
                f"| {follow} | {r.lost_writes} | {r.read_outage_s} | {r.reads} | {r.writes} "
                f"| {r.longest_s} |"
            )
        return out

    return [
        "# failover benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {READERS} readers and "
        f"{WRITERS} writers, the fault {FAULT_AT_S:g} s in, the load going on for at least "
        f"{AFTER_S:g} s after it and until writes have been back {AFTER_BACK_S:g} s "
        f"(at most {CAP_S:g} s). 'Writes back after': from the start of the fault (the kill, "
        "the SIGSTOP, the stop, patronictl switchover, the SIGSTOP of etcd) to the first "
        "write acknowledged among those sent once writes were disturbed (one failed or took "
        "over 0.5 s; 0 if none was). 'First write after the promotion': from the "
        "promotion's completion, as a watcher polling the servers every 5 ms saw it, to the "
        "first write acknowledged after it. 'Reads disturbed until': the end of the last "
        "read after the start of the fault that failed or took over 0.5 s. Lost "
        "acknowledged writes: acknowledged, and missing on the final primary.",
        "",
        "## A primary and its mirror; the door promotes",
        "",
        "mirrorpool with MIRRORPOOL_HEALTH_INTERVAL=0.2, HEALTH_TIMEOUT=0.5, "
        "HEALTH_THRESHOLD=2, PROMOTE_AFTER_S=0.5; Pgpool-II with health_check_period=1, "
        "health_check_timeout=1, health_check_max_retries=0, failover_on_backend_error=on "
        "and a failover_command that promotes the mirror.",
        "",
        header,
        rule,
        *rows("pair"),
        "",
        "## Patroni decides; the door follows",
        "",
        "Patroni 3.0 and etcd 3.4 (ttl 10, loop_wait 1, retry_timeout 3, synchronous_mode). "
        "mirrorpool with its defaults (1 s health interval) and one DSN per member; HAProxy "
        "with Patroni's REST checks (writes: OPTIONS /primary, reads: OPTIONS /read-only, "
        "http-check expect status 200, inter 1s fall 2 rise 1, on-marked-down "
        "shutdown-sessions); Pgpool-II with the checks above and no failover_command (it "
        "finds the new primary itself). Half the readers through mirrorpool are read_only, "
        "half plain (no read_only); through HAProxy they use its read port, and through "
        "Pgpool-II its one port (a plain read and a read_only one are the same read there).",
        "",
        header,
        rule,
        *rows("patroni"),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
