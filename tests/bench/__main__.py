"""`make bench`: mirrorpool against a plain psycopg loop and the tutorial baseline, side by side.

Every target gets the same data, workloads, concurrency levels and total pool size (10
connections), measured in one run on this machine with the load generator (wrk, or the
loop itself for the raw target) in a process of its own; then the memory cases of
tests/bench/memory.py (oversized answers). Writes a Markdown table to
tests/bench/results/latest.md and a chart to tests/bench/results/latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from app.devdb import OWNER, SERVICE, LocalPair, free_ports
from app.settings import load_settings
from tests.bench import memory, profile
from tests.bench.workloads import SETUP_SQL, WORKLOADS, Workload
from tests.pgbouncer import LocalPgBouncer

RESULTS = Path(__file__).parent / "results"
POOL_SIZE = 10
CONCURRENCY = (1, 8, 32, 128)

LUA = """
counter = 0
request = function()
  counter = counter + 1
  local id = (counter * 7919 + %(seed)d) %% %(rows)d + 1
  return wrk.format("POST", "%(path)s", %(headers)s,
                    string.format('%(body)s', id, id, id))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "errors": %%d, "seconds": %%f, ' ..
    '"p50_ms": %%f, "p95_ms": %%f, "p99_ms": %%f}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


@dataclass
class Cell:
    """One measurement."""

    target: str
    workload: str
    concurrency: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    cpu_pct: float | None = None
    rss_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# What the Neon driver sends besides its body (with the key as the URL's password).
NEON_HEADERS = (
    '{["Content-Type"] = "text/plain;charset=UTF-8", ["Neon-Raw-Text-Output"] = "true", '
    '["Neon-Array-Mode"] = "true", '
    '["Neon-Connection-String"] = "postgresql://bench:nokey@127.0.0.1/bench"}'
)
JSON_HEADERS = '{["Content-Type"] = "application/json"}'


def lua_body(workload: Workload) -> tuple[str, str]:
    """The path and a printf-style body with %d for the row id."""
    if workload.neon:
        body = json.dumps({"query": workload.statements[0], "params": ["0"]})
        return "/sql", body.replace('"0"', '"%d"')
    if workload.transaction:
        statements = ",".join(
            json.dumps({"sql": sql, "params": [0]}).replace("[0]", "[%d]")
            for sql in workload.statements
        )
        return "/v1/transaction", '{"statements": [' + statements + "]}"
    body = json.dumps({"sql": workload.statements[0], "params": [0]}).replace("[0]", "[%d]")
    return "/v1/query", body


def process_tree(pid: int) -> list[int]:
    """A process and its descendants."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in pids:
            pids.append(int(stat.parent.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


class Server:
    """An HTTP target in a process of its own."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.post(
                        f"http://127.0.0.1:{port}/v1/query", json={"sql": "SELECT 1"}, timeout=2
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_wrk(
    server: Server,
    workload: Workload,
    concurrency: int,
    seconds: float,
    profile_dir: Path | None = None,
) -> Cell:
    """One cell: wrk against the target; with `profile_dir`, py-spy samples the target
    meanwhile, and the summary of where its time went is written there (tests/bench/profile.py)."""
    path, body = lua_body(workload)
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        LUA
        % {
            "seed": concurrency,
            "rows": 1_000_000,
            "path": path,
            "body": body.replace("'", "\\'"),
            "headers": NEON_HEADERS if workload.neon else JSON_HEADERS,
        }
    )
    pids = process_tree(server.proc.pid)
    cpu_before = cpu_seconds(pids)
    spy = None
    if profile_dir is not None:
        samples = profile_dir / f"{workload.name}-{concurrency}.txt"
        spy = profile.record(server.proc.pid, seconds, samples)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(script),
         f"http://127.0.0.1:{server.port}"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    script.unlink()
    result = json.loads(out.strip().splitlines()[-1])
    cpu = cpu_seconds(pids) - cpu_before
    if spy is not None and profile_dir is not None:
        spy.wait(seconds + 60)
        summary = profile.summary(samples)
        samples.with_suffix(".md").write_text(summary)
        print(summary, flush=True)
    return Cell(
        server.name, workload.name, concurrency,
        rps=round(result["requests"] / result["seconds"], 1),
        p50_ms=round(result["p50_ms"], 3), p95_ms=round(result["p95_ms"], 3),
        p99_ms=round(result["p99_ms"], 3), errors=result["errors"],
        cpu_pct=round(100 * cpu / result["seconds"], 1), rss_mib=peak_rss_mib(pids),
    )  # fmt: skip


RAW = "psycopg pool loop"
RAW_VIA_PGBOUNCER = "psycopg pool loop via PgBouncer (transaction mode)"


def run_raw(
    dsn: str, workload: Workload, concurrency: int, seconds: float, *, via_pgbouncer: bool = False
) -> Cell:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.raw_loop", dsn, workload.name, str(concurrency),
         str(POOL_SIZE), str(seconds), *(["unprepared"] if via_pgbouncer else [])],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    r = json.loads(out)
    return Cell(
        RAW_VIA_PGBOUNCER if via_pgbouncer else RAW, workload.name, concurrency,
        round(r["requests"] / r["seconds"], 1),
        r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"],
    )  # fmt: skip


def stream_million(server: Server) -> dict[str, float]:
    pids = process_tree(server.proc.pid)
    rss_before = peak_rss_mib(pids)
    started = time.monotonic()
    rows = size = 0
    with httpx.stream(
        "POST", f"http://127.0.0.1:{server.port}/v1/query/stream",
        json={"sql": "SELECT id, name, value, created_at FROM bench_items", "timeout_ms": 120000},
        timeout=120,
    ) as response:  # fmt: skip
        for chunk in response.iter_bytes():
            size += len(chunk)
            rows += chunk.count(b"\n")
    elapsed = time.monotonic() - started
    return {
        "rows": rows - 2,
        "seconds": round(elapsed, 2),
        "rows_per_s": round((rows - 2) / elapsed),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "rss_growth_mib": round(peak_rss_mib(pids) - rss_before, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS))
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="one more 1-worker mirrorpool target with these MIRRORPOOL_* settings "
        "(e.g. MIRRORPOOL_MULTIPLEX_WRITES=false), measured in the same run",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the loop and the 1-worker targets: no 2 workers, baseline, PgBouncer, "
        "streaming or memory cases; the results go to quick.md, not latest.*",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the 1-worker mirrorpool target with py-spy in each of its cells, and "
        "write each cell's samples and the summary of where its time went to DIR",
    )
    args = parser.parse_args()
    also = [dict(pair.split("=", 1) for pair in spec.split(",")) for spec in args.also]
    if shutil.which("wrk") is None:
        print("bench: wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 2
    workloads = [w for w in WORKLOADS if w.name in args.workloads.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    settings = load_settings()
    base = Path(tempfile.mkdtemp(prefix="mirrorpool-bench-"))
    base.chmod(0o755)
    pair = bouncer = None
    if settings.primary_dsn is not None:
        dsn = owner = settings.primary_dsn.get_secret_value()
        print(
            "bench: MIRRORPOOL_PRIMARY_DSN is set, so the PgBouncer rows are left out", flush=True
        )
    else:
        started = time.monotonic()
        pair = LocalPair(base / "pair", mirrors=0)
        pair.start()
        pair_start_s = round(time.monotonic() - started, 2)
        # Every contender logs in as the service's unprivileged login; the tables are the
        # schema owner's, as a migration would make them (README: Access).
        dsn, owner = pair.primary.dsn(user=SERVICE), pair.primary.dsn(user=OWNER)
        # PgBouncer in transaction mode in front of the same primary, with the same number of
        # server connections: the pooler users compare with.
        bouncer = LocalPgBouncer(pair, base / "pgbouncer", pool_size=POOL_SIZE)
        bouncer.start()
    try:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(owner, autocommit=True) as conn:
            for sql in SETUP_SQL:
                conn.execute(sql)
        via = None if bouncer is None else Bouncer(bouncer.dsn(user=SERVICE), owner)
        if args.quick:
            via = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        cells = measure(dsn, workloads, levels, args.seconds, via, also, args.quick, args.profile)
        if args.quick:
            quick_report(cells, args.seconds)
            return 0
        servers_env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
        server = start_mirrorpool(dsn, 1, servers_env)
        try:
            streaming = stream_million(server)
        finally:
            server.stop()
        held = memory.report(memory.measure(dsn, [("mirrorpool, 1 worker", None)]))
        report(cells, streaming, held, args.seconds, pair_start_s if pair else None)
    finally:
        if bouncer is not None:
            bouncer.stop()
        if pair is not None:
            pair.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return 0


@dataclass(frozen=True)
class Bouncer:
    """PgBouncer's DSN for the service's login, and the direct DSN migrations need."""

    dsn: str
    direct: str


def start_mirrorpool(
    dsn: str,
    workers: int,
    env: dict[str, str],
    via: Bouncer | None = None,
    settings: dict[str, str] | None = None,
) -> Server:
    """A mirrorpool target; `settings` (MIRRORPOOL_* of its own, --also) are named in it."""
    port = free_ports(1)[0]
    behind = {} if via is None else {
        "MIRRORPOOL_PGBOUNCER": "true", "MIRRORPOOL_MIGRATIONS_DSN": via.direct,
    }  # fmt: skip
    own = settings or {}
    return Server(
        f"mirrorpool, {workers} worker{'s' if workers > 1 else ''}"
        + (" via PgBouncer" if via is not None else "")
        + "".join(f", {k.removeprefix('MIRRORPOOL_')}={v}" for k, v in own.items()),
        [sys.executable, "-m", "app", "serve"],
        env | behind | {
            "MIRRORPOOL_PRIMARY_DSN": dsn, "MIRRORPOOL_PORT": str(port),
            "MIRRORPOOL_WORKERS": str(workers), "MIRRORPOOL_LOG_LEVEL": "warning",
        "MIRRORPOOL_AUTH": "disabled",
            "MIRRORPOOL_POOL_MIN_SIZE": str(POOL_SIZE // workers),
            "MIRRORPOOL_POOL_MAX_SIZE": str(POOL_SIZE // workers),
            "MIRRORPOOL_POOL_MAX_WAITING": "0",
        } | own,
        port,
    )  # fmt: skip


def start_baseline(dsn: str, env: dict[str, str]) -> Server:
    port = free_ports(1)[0]
    return Server(
        "psycopg2 + Flask + gunicorn (baseline)",
        [sys.executable, "-m", "gunicorn", "-w", "2", "--threads", "8", "-b",
         f"127.0.0.1:{port}", "--log-level", "warning", "tests.bench.baseline_app:app"],
        env | {"BENCH_DSN": dsn},
        port,
    )  # fmt: skip


def measure(
    dsn: str,
    workloads: list[Workload],
    levels: list[int],
    seconds: float,
    via: Bouncer | None,
    also: list[dict[str, str]] = [],  # noqa: B006 (never changed)
    quick: bool = False,
    profile_dir: Path | None = None,
) -> list[Cell]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    cells: list[Cell] = []
    for workload in workloads:
        for c in levels:
            cells.append(run_raw(dsn, workload, c, seconds))
            print(f"bench: {cells[-1]}", flush=True)
            if via is not None and not workload.neon:
                cells.append(run_raw(via.dsn, workload, c, seconds, via_pgbouncer=True))
                print(f"bench: {cells[-1]}", flush=True)
    starters: list[Callable[[], Server]] = [lambda: start_mirrorpool(dsn, 1, env)]
    # One more 1-worker target per --also, in the same run: the same loop figures to compare.
    starters += [partial(start_mirrorpool, dsn, 1, env, settings=own) for own in also]
    if not quick:
        starters += [lambda: start_mirrorpool(dsn, 2, env), lambda: start_baseline(dsn, env)]
    if via is not None and not quick:
        starters.append(lambda: start_mirrorpool(via.dsn, 1, env, via))
    for n, start in enumerate(starters):
        server = start()
        # (only the first target, the 1-worker mirrorpool, is sampled)
        spied = profile_dir if n == 0 else None
        try:
            for workload in workloads:
                if workload.neon and not server.name.startswith("mirrorpool"):
                    continue  # the baseline speaks only /v1/query
                for c in levels:
                    cells.append(run_wrk(server, workload, c, seconds, spied))
                    print(f"bench: {cells[-1]}", flush=True)
        finally:
            server.stop()
    return cells


def report(
    cells: list[Cell],
    streaming: dict[str, float],
    held: list[str],
    seconds: float,
    pair_start_s: float | None,
) -> None:
    RESULTS.mkdir(exist_ok=True)
    raw = {(c.workload, c.concurrency): c.rps for c in cells if c.target == RAW}
    baseline = {
        (c.workload, c.concurrency): c.rps for c in cells if c.target.startswith("psycopg2")
    }
    lines = [
        "# mirrorpool benchmark",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {seconds:g} s per cell; "
        f"pool size {POOL_SIZE} for every target; load from wrk (one thread) or the loop itself."
        + (f" Local pair started in {pair_start_s} s." if pair_start_s else ""),
        "",
        "| workload | concurrency | target | req/s | x raw loop | x baseline | p50 ms | p95 ms "
        "| p99 ms | errors | server CPU % | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        key = (c.workload, c.concurrency)
        lines.append(
            f"| {c.workload} | {c.concurrency} | {c.target} | {c.rps:,.0f} "
            f"| {c.rps / raw[key]:.2f} | "
            + (f"{c.rps / baseline[key]:.1f}" if baseline.get(key) else "-")
            + f" | {c.p50_ms} | {c.p95_ms} | {c.p99_ms} | {c.errors} "
            f"| {c.cpu_pct if c.cpu_pct is not None else '-'} "
            f"| {c.rss_mib if c.rss_mib is not None else '-'} |"
        )
    lines += [
        "",
        "Streaming 1,000,000 rows through `/v1/query/stream` (one worker): "
        f"{streaming['rows']:,} rows in {streaming['seconds']} s, "
        f"{streaming['rows_per_s']:,} rows/s, {streaming['mb_per_s']} MB/s, "
        f"server peak RSS growth {streaming['rss_growth_mib']} MiB.",
        "",
        "Oversized answers (tests/bench/memory.py; a fresh server each):",
        "",
        *held,
        "",
    ]
    (RESULTS / "latest.md").write_text("\n".join(lines))
    (RESULTS / "latest.json").write_text(
        json.dumps({"cells": [c.__dict__ for c in cells], "streaming": streaming}, indent=1)
    )
    chart(cells)
    print("\n".join(lines))


def quick_report(cells: list[Cell], seconds: float) -> None:
    """--quick: req/s and the ratio to the loop of the same run, to tests/bench/results/quick.md
    (not tracked: latest.* stay the full run's)."""
    raw = {(c.workload, c.concurrency): c.rps for c in cells if c.target == RAW}
    lines = [
        f"# mirrorpool quick benchmark ({seconds:g} s per cell, pool size {POOL_SIZE})",
        "",
        "| workload | concurrency | target | req/s | x raw loop | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        ratio = c.rps / raw[(c.workload, c.concurrency)]
        lines.append(
            f"| {c.workload} | {c.concurrency} | {c.target} | {c.rps:,.0f} | {ratio:.2f} "
            f"| {c.p50_ms} | {c.p99_ms} | {c.errors} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quick.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def chart(cells: list[Cell]) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    targets = list(dict.fromkeys(c.target for c in cells))
    workloads = list(dict.fromkeys(c.workload for c in cells))
    fig, axes = plt.subplots(2, len(workloads), figsize=(4.5 * len(workloads), 7), squeeze=False)
    for col, workload in enumerate(workloads):
        for target in targets:
            mine = [c for c in cells if c.target == target and c.workload == workload]
            xs = [c.concurrency for c in mine]
            axes[0][col].plot(xs, [c.rps for c in mine], marker="o", label=target)
            axes[1][col].plot(xs, [c.p99_ms for c in mine], marker="o", label=target)
        axes[0][col].set_title(workload)
        axes[0][col].set_ylabel("requests/s")
        axes[1][col].set_ylabel("p99 latency (ms)")
        for row in (0, 1):
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_xlabel("concurrency")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "latest.png", dpi=90)


if __name__ == "__main__":
    raise SystemExit(main())
