"""`make bench`'s memory cases: what mirrorpool holds while it answers an oversized result.

Each case runs against a mirrorpool process of its own (one worker, pool of 10), so its peak
resident memory (VmHWM) belongs to that case alone:

- four concurrent requests for 500,000 rows of 1 kB with max_rows 1 (goal: RSS growth under
  60 MB, each answered within 2 s);
- one 200 MB value (goal: an answer, and the process still up).

`python -m tests.bench.memory --compare DIR` measures another source tree side by side (a
`git worktree add --detach DIR <commit>` of the code before a change): its server runs from
DIR with this interpreter. Writes tests/bench/results/memory.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.devdb import SERVICE, LocalPair, free_ports

RESULTS = Path(__file__).parent / "results"
WIDE_ROWS = "SELECT repeat($1, 1000) AS r FROM generate_series(1, 500000) g"
BIG_VALUE = "SELECT repeat('x', 200 * 1024 * 1024) AS v"
TIMEOUT_S = 120.0


@dataclass
class Case:
    """One memory case against one build."""

    build: str
    case: str
    statuses: list[str]
    seconds: list[float]
    rss_before_mib: float
    peak_growth_mib: float
    rss_after_mib: float
    alive: bool


class Mirrorpool:
    """mirrorpool serve from a source tree (None: this one), in a process of its own."""

    def __init__(self, dsn: str, tree: Path | None) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
        env |= {
            "MIRRORPOOL_PRIMARY_DSN": dsn,
            "MIRRORPOOL_PORT": str(self.port),
            "MIRRORPOOL_LOG_LEVEL": "warning",
            "MIRRORPOOL_AUTH": "disabled",
            "MIRRORPOOL_POOL_MIN_SIZE": "10",
            "MIRRORPOOL_POOL_MAX_SIZE": "10",
        }
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env=env,
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("mirrorpool did not start")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def rss_mib(self, field: str = "VmRSS") -> float:
        """Resident memory (or, with VmHWM, its peak) in MiB; 0 once the process is gone."""
        try:
            lines = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        except OSError:
            return 0.0
        for line in lines:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def alive(self) -> bool:
        """The process is up and answers a query."""
        if self.proc.poll() is not None:
            return False
        try:
            answer = httpx.post(self.url + "/v1/query", json={"sql": "SELECT 1"}, timeout=10)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _post(url: str, body: dict[str, Any]) -> tuple[str, float]:
    """POST a query; its status (with truncated, or the problem's type) and its seconds."""
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.post(url + "/v1/query", json=body)
    except httpx.HTTPError as exc:
        return f"failed: {type(exc).__name__}", round(time.monotonic() - started, 2)
    seconds = round(time.monotonic() - started, 2)
    if response.status_code != 200:
        kind = response.json().get("type", "").rsplit(":", 1)[-1] if response.content else ""
        return f"{response.status_code} {kind}".strip(), seconds
    answer = response.json()
    return f"200, {answer['row_count']} rows, truncated {answer['truncated']}", seconds


def run_case(build: str, dsn: str, tree: Path | None, case: str) -> Case:
    server = Mirrorpool(dsn, tree)
    try:
        # A first small request of the same kind: what any server holds once it has answered.
        asyncio.run(_post(server.url, {"sql": WIDE_ROWS.replace("500000", "3"), "params": ["x"]}))
        before = server.rss_mib()
        if case == "wide":
            body = {"sql": WIDE_ROWS, "params": ["x"], "max_rows": 1}
            requests = [_post(server.url, body) for _ in range(4)]
        else:
            requests = [_post(server.url, {"sql": BIG_VALUE})]

        async def together() -> list[tuple[str, float]]:
            return list(await asyncio.gather(*requests))

        answers = asyncio.run(together())
        peak = server.rss_mib("VmHWM")
        alive = server.alive()
        after = server.rss_mib()
        return Case(
            build,
            case,
            [a[0] for a in answers],
            [a[1] for a in answers],
            before,
            round(peak - before, 1),
            after,
            alive,
        )
    finally:
        server.stop()


def measure(dsn: str, builds: list[tuple[str, Path | None]]) -> list[Case]:
    """Every case for every build, one fresh server each."""
    cases = []
    for case in ("wide", "value"):
        for build, tree in builds:
            cases.append(run_case(build, dsn, tree, case))
            print(f"bench memory: {cases[-1]}", flush=True)
    return cases


def report(cases: list[Case]) -> list[str]:
    """The Markdown lines of the memory table."""
    names = {
        "wide": "4 concurrent x 500,000 rows x 1 kB, max_rows 1",
        "value": "one 200 MB value",
    }
    lines = [
        "| case | build | answers | seconds | RSS before MiB | peak growth MiB "
        "| RSS after MiB | up after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        statuses = "; ".join(sorted(set(c.statuses)))
        seconds = ", ".join(f"{s:g}" for s in c.seconds)
        lines.append(
            f"| {names[c.case]} | {c.build} | {statuses} | {seconds} | {c.rss_before_mib} "
            f"| {c.peak_growth_mib} | {c.rss_after_mib} | {'yes' if c.alive else 'no'} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.memory")
    parser.add_argument("--compare", type=Path, help="another source tree, measured too")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mirrorpool-bench-memory-"))
    base.chmod(0o755)
    pair = LocalPair(base / "pair", mirrors=0)
    pair.start()
    try:
        builds: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.compare is not None:
            builds.insert(0, ("before", args.compare.resolve()))
        lines = report(measure(pair.primary.dsn(user=SERVICE), builds))
    finally:
        pair.destroy()
        shutil.rmtree(base, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    text = "\n".join(
        [
            "# mirrorpool memory bench",
            "",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores.",
            "",
            *lines,
            "",
        ]
    )
    (RESULTS / "memory.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
