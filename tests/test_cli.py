"""The `mirrorpool` command as a user runs it: serve, dev, and a clean stop on a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from app.devdb import SERVICE, LocalPair, alive, free_ports
from tests.waiting import eventually_sync


def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        env=base | env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def status_of(url: str) -> int | None:
    response = get(url)
    return response.status_code if response else None


def mirrorpool_connections(pair: LocalPair) -> int:
    with pair.primary.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mirrorpool-cli-test'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_serve_answers_then_stops_cleanly_on_sigterm(pair: LocalPair) -> None:
    port = free_ports(1)[0]
    proc = start(
        ["serve"],
        {
            "MIRRORPOOL_PRIMARY_DSN": pair.primary.dsn(user=SERVICE),
            "MIRRORPOOL_MIRROR_DSN": pair.mirrors[0].dsn(user=SERVICE),
            "MIRRORPOOL_PORT": str(port),
            "MIRRORPOOL_APPLICATION_NAME": "mirrorpool-cli-test",
            "MIRRORPOOL_POOL_MIN_SIZE": "2",
            "MIRRORPOOL_AUTH": "disabled",
        },
    )
    try:
        eventually_sync(lambda: status_of(f"http://127.0.0.1:{port}/health") == 200, "health")
        eventually_sync(lambda: mirrorpool_connections(pair) >= 2, "the pool's connections")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert "pools closed" in output
    assert pair.password not in output
    eventually_sync(lambda: mirrorpool_connections(pair) == 0, "pool connections to close")


def test_dev_starts_a_pair_serves_and_ctrl_c_leaves_nothing(work_dir: Path) -> None:
    project = work_dir / "dev-project"
    project.mkdir(mode=0o755)
    port = free_ports(1)[0]
    proc = start(["dev"], {"MIRRORPOOL_PORT": str(port)}, cwd=project)
    started = time.monotonic()
    try:
        eventually_sync(
            lambda: status_of(f"http://127.0.0.1:{port}/health") == 200, "health", timeout=60
        )
        assert status_of(f"http://127.0.0.1:{port}/docs") == 200
        ready_after = time.monotonic() - started
        pids = LocalPair(project / ".devdb").processes() or server_pids(project / ".devdb")
        assert pids, "the local pair is running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert f"http://127.0.0.1:{port}/docs" in output
    assert "PGPASSFILE=.devdb/pgpass" in output
    passwords = [
        line.rsplit(":", 1)[1] for line in (project / ".devdb" / "pgpass").read_text().split()
    ]
    assert len(passwords) == 3  # the superuser, the schema's owner, the service
    assert not [p for p in passwords if p in output]
    eventually_sync(lambda: not any(alive(p) for p in pids), "the pair's servers to stop")
    assert ready_after < 60
    # The pair is kept for the next run, and its password file works for psql and friends.
    proc = start(["dev"], {"MIRRORPOOL_PORT": str(port)}, cwd=project)
    try:
        eventually_sync(
            lambda: status_of(f"http://127.0.0.1:{port}/health") == 200, "health", timeout=60
        )
        assert proc.stdout is not None
        lines = iter(proc.stdout.readline, "")
        primary_line = next(line for line in lines if line.strip().startswith("primary"))
        dsn = primary_line.split(None, 1)[1].strip()
        with psycopg.connect(dsn, passfile=str(project / ".devdb" / "pgpass")) as conn:
            # The service's own login, as production should have it: no superuser.
            who = conn.execute(
                "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            assert who.fetchone() == ("mirrorpool", False)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()


def server_pids(devdb: Path) -> list[int]:
    """Postmasters whose command line names a data folder under `devdb`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(devdb) in cmdline:
                pids.append(int(entry.name))
    return pids
