"""Oversized, slow and keyless requests against a real server, by its memory (RSS), and
POST /v1/query throughput, for this tree and optionally another side by side:

    python -m tests.bench.http_limits [--other DIR]   # DIR: another checkout's top folder

About a minute per tree. The cases are issue 14's: 10,000 headers, one 1 MB header, ten
unfinished 16 MB header blocks, forty slow-body connections (a byte every 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.api.auth import hash_key
from app.devdb import SERVICE, LocalPair, free_ports

KEY = "bench-http-limits-key-0123456789"
READ_TIMEOUT_S = 5
ROUNDS = 8
WRK_BODY = '{"sql": "SELECT $1::int", "params": [1]}'


class Server:
    """`python -m app serve` from a source folder, with its RSS at hand."""

    def __init__(self, source: Path, pair: LocalPair, auth: bool) -> None:
        self.port = free_ports(1)[0]
        keys = [{"id": "bench", "sha256": hash_key(KEY), "scopes": ["read"]}]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")} | {
            "MIRRORPOOL_PRIMARY_DSN": pair.primary.dsn(user=SERVICE),
            "MIRRORPOOL_PORT": str(self.port),
            "MIRRORPOOL_LOG_LEVEL": "error",
            "MIRRORPOOL_AUTH": "keys" if auth else "disabled",
            "MIRRORPOOL_API_KEYS": json.dumps(keys),
            "MIRRORPOOL_REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
            "MIRRORPOOL_MAX_INFLIGHT_PER_KEY": "40",
            "PYTHONPATH": str(source),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"], cwd=source, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url("/health/ready"), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_mib(self, field: str = "VmRSS") -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+)", text, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def answer_status(sock: socket.socket) -> str:
    """The status the server answered with, or how the connection ended."""
    try:
        data = sock.recv(4096)
    except (TimeoutError, ConnectionResetError) as exc:
        return type(exc).__name__
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"


def send_all(sock: socket.socket, data: bytes) -> str:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return "cut off"
    return "sent"


def many_headers(server: Server) -> str:
    with connect(server) as sock:
        head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"a:b\r\n" * 10_000
        how = send_all(sock, head + b"\r\n")
        return f"{how}, answered {answer_status(sock)}"


def big_header(server: Server) -> str:
    with connect(server) as sock:
        head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 2**20
        how = send_all(sock, head + b"\r\n\r\n")
        return f"{how}, answered {answer_status(sock)}"


def unfinished_header_blocks(server: Server) -> str:
    socks = [connect(server) for _ in range(10)]
    hows = []
    for sock in socks:
        sock.settimeout(5)
        head = b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        how = send_all(sock, head)
        for _ in range(256):
            if how != "sent":
                break
            how = send_all(sock, b"b" * 65536)
        hows.append(how)
    time.sleep(1)  # let the server take in what was sent before its RSS is read
    statuses = [answer_status(sock) for sock in socks]
    for sock in socks:
        sock.close()
    return f"{hows.count('cut off')}/10 cut off, answers {sorted(set(statuses))}"


def slow_bodies(server: Server) -> str:
    socks = [connect(server) for _ in range(40)]
    for sock in socks:
        sock.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
    time.sleep(0.5)
    other = httpx.post(
        server.url("/v1/query"),
        json={"sql": "SELECT 1"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ).status_code
    started = time.monotonic()
    open_ = set(range(40))
    ended_at: list[float] = []
    while open_ and time.monotonic() - started < 12:
        for i in sorted(open_):
            if send_all(socks[i], b" ") != "sent":
                open_.discard(i)
                ended_at.append(time.monotonic() - started)
        time.sleep(2)
    for sock in socks:
        sock.close()
    return (
        f"a 41st request of the key (limit 40) got {other}; after 12 s {len(open_)}/40 still "
        f"open" + (f", the others cut off by {max(ended_at):.0f} s" if ended_at else "")
    )


def rss_case(server: Server, name: str, case: object) -> str:
    before = server.rss_mib()
    assert callable(case)
    outcome = case(server)
    grown = server.rss_mib("VmHWM") - before
    return f"| {name} | {outcome} | {before:.0f} MiB | +{grown:.1f} MiB (peak) |"


def cpu_s(server: Server) -> float:
    """The server's CPU time so far (user and system), in seconds."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(server: Server, seconds: int = 8) -> tuple[float, float]:
    """Requests per second, and the server's CPU microseconds per request."""
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is needed: apt-get install wrk"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = '{WRK_BODY}'\n"
        )
    cpu = cpu_s(server)
    result = subprocess.run(
        [wrk, "-t1", "-c32", f"-d{seconds}s", "-s", script.name, server.url("/v1/query")],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    )  # fmt: skip
    Path(script.name).unlink()
    cpu = cpu_s(server) - cpu
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    total = re.search(r"(\d+) requests in", result.stdout)
    assert rate is not None and total is not None, result.stdout
    return float(rate.group(1)), cpu / int(total.group(1)) * 1e6


@contextmanager
def serving(source: Path, pair: LocalPair, auth: bool) -> Iterator[Server]:
    server = Server(source, pair, auth)
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--throughput-only", action="store_true", help="skip the RSS cases")
    args = parser.parse_args()
    trees = {"this tree": Path.cwd()}
    if args.other:
        trees["other"] = args.other.resolve()
    cases = {
        "10,000 headers": many_headers,
        "one 1 MB header": big_header,
        "10 unfinished 16 MB header blocks, no key": unfinished_header_blocks,
        "40 slow-body connections with a key": slow_bodies,
    }
    if args.throughput_only:
        cases = {}
    with tempfile.TemporaryDirectory(prefix="mirrorpool-bench-") as folder:
        Path(folder).chmod(0o755)
        with LocalPair(Path(folder) / "pair", mirrors=0) as pair:
            for name, source in trees.items() if cases else ():
                print(f"\n{name} ({source})\n\n| case | outcome | RSS before | growth |")
                print("|---|---|---|---|")
                for case_name, case in cases.items():
                    with serving(source, pair, auth=True) as server:
                        print(rss_case(server, case_name, case), flush=True)
            interleaved_throughput(trees, pair)


def interleaved_throughput(trees: dict[str, Path], pair: LocalPair) -> None:
    """Every tree's server up at once, measured in turns of 2 s: a machine shared with
    other work slows each alike."""
    print(f"\nPOST /v1/query, wrk -t1 -c32, auth disabled, {ROUNDS} turns of 2 s each:")
    servers = {name: Server(source, pair, auth=False) for name, source in trees.items()}
    try:
        for server in servers.values():
            throughput(server, 2)  # warm-up
        totals = {name: [0.0, 0.0] for name in servers}
        for _ in range(ROUNDS):
            for name, server in servers.items():
                rate, cpu = throughput(server, 2)
                totals[name][0] += rate / ROUNDS
                totals[name][1] += cpu / ROUNDS
        for name, (rate, cpu) in totals.items():
            print(f"  {name}: {rate:.0f} req/s, {cpu:.1f} us CPU per request")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
