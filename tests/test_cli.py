"""The `mirrorpool` command as a user runs it: serve, dev, and a clean stop on a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from app.devdb import OWNER, SERVICE, LocalPair, alive, free_ports
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
    assert "source .devdb/env" in output
    first_ports = dsn_ports(output)
    env = (project / ".devdb" / "env").read_text()
    assert "export MIRRORPOOL_PRIMARY_DSN=" in env and "export PGPASSFILE=" in env
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
        mirror_line = next(lines)
        # The pair keeps its ports from one run to the next: exported DSNs stay good.
        assert dsn_ports(primary_line + mirror_line) == first_ports
        # .devdb/env, sourced in a shell, leads libpq (psql's library) to the writer as the
        # schema's owner.
        sourced = subprocess.run(
            ["bash", "-c", f"source .devdb/env && {sys.executable} -c '{WHO_AM_I}'"],
            cwd=project, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert sourced.stdout.split() == [OWNER, "False"], sourced.stderr
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


WHO_AM_I = (
    "import psycopg; print(*psycopg.connect()"
    '.execute("SELECT current_user, pg_is_in_recovery()").fetchone())'
)


def dsn_ports(output: str) -> list[str]:
    """The ports of the primary and mirror lines `mirrorpool dev` printed."""
    lines = [line.split() for line in output.splitlines()]
    return [
        next(w for w in words if w.startswith("port="))
        for words in lines
        if words and words[0] in {"primary", "mirror"}
    ]


def test_ctrl_c_while_the_pair_is_being_made_stops_what_had_started(work_dir: Path) -> None:
    """A newcomer's first `make run` takes a few seconds to make the pair; a Ctrl-C then (the
    primary up, the mirror still being copied) stops the primary too, and says so."""
    project = work_dir / "dev-early-stop"
    project.mkdir(mode=0o755)
    proc = start(["dev"], {"MIRRORPOOL_PORT": str(free_ports(1)[0])}, cwd=project)
    try:
        eventually_sync(
            lambda: any((project / ".devdb").glob("**/postmaster.pid")), "a server", timeout=60
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert "Traceback" not in output, output
    assert "local PostgreSQL pair stopped" in output, output
    eventually_sync(lambda: not server_pids(project / ".devdb"), "no server left", timeout=30)


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


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `mirrorpool ARGS` to its end from `cwd` with no MIRRORPOOL_* or PG* variable set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MIRRORPOOL_", "PG"))}
    done = subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=base | (env or {}), cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def test_busy_port_stops_dev_with_one_line_before_anything_starts(work_dir: Path) -> None:
    project = work_dir / "busy-port-project"
    project.mkdir(mode=0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        code, out, err = run_cli(["dev"], project, {"MIRRORPOOL_PORT": str(port)})
        took = time.monotonic() - started
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"mirrorpool: 127.0.0.1:{port} is already in use (another mirrorpool?); set "
        f"MIRRORPOOL_PORT to another port, e.g. MIRRORPOOL_PORT={port + 1} make run"
    ]
    assert not (project / ".devdb").exists(), "no server was started, no key printed"
    assert took < 10


# `mirrorpool ARGS` with a psycopg whose libpq has no PQsendPipelineSync (before 17): the
# capability probe answers as it does there.
_OLD_LIBPQ = (
    "import sys; import app.sql.pipeline.syncing as s; s._send_sync = lambda: None;"
    " from app.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def test_a_libpq_older_than_17_stops_start_up_with_one_line(work_dir: Path) -> None:
    # Behind PgBouncer a transaction's end and its cleanup must reach the pooler in one
    # write, and the reading takes rows in chunks: both need libpq 17. Without it, neither
    # `dev` nor `serve` starts anything; each says what to install.
    project = work_dir / "old-libpq-project"
    project.mkdir(mode=0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MIRRORPOOL_", "PG"))}
    port = str(free_ports(1)[0])
    for args, env in (
        (["dev"], {"MIRRORPOOL_PORT": port}),
        (["serve"], {"MIRRORPOOL_PORT": port, "MIRRORPOOL_PRIMARY_DSN": "host=127.0.0.1"}),
    ):
        done = subprocess.run(
            [sys.executable, "-c", _OLD_LIBPQ, *args],
            env=base | env, cwd=project, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == ""
        (line,) = done.stderr.splitlines()
        assert line.startswith("mirrorpool: mirrorpool needs libpq 17 or later"), line
        assert "install psycopg[binary]" in line
        assert not (project / ".devdb").exists(), "no server was started"


def test_cli_finds_the_local_pair_running_in_the_project_folder(work_dir: Path) -> None:
    project = work_dir / "cli-finds-pair"
    project.mkdir(mode=0o755)
    code, _, err = run_cli(["migrate", "status"], project)
    assert code == 2
    assert err.splitlines() == [
        "mirrorpool: MIRRORPOOL_PRIMARY_DSN is not set and no local pair runs in .devdb/ here: "
        "start one with `make run` in another shell (then run this again from this folder), "
        "or point MIRRORPOOL_PRIMARY_DSN at your primary"
    ]
    (project / "migrations").mkdir()
    (project / "migrations" / "0001_notes.up.sql").write_text("CREATE TABLE notes (body text);")
    # What `make run` leaves running: a pair kept in .devdb/ by another process.
    with LocalPair(project / ".devdb") as local:
        where = f"primary 127.0.0.1:{local.primary.port}, mirror 127.0.0.1:{local.mirrors[0].port}"
        code, out, err = run_cli(["migrate", "status"], project)
        assert code == 0, err
        assert f"using the local pair running in .devdb/ ({where})" in err
        assert "pending" in out and "notes" in out
        code, out, err = run_cli(["migrate", "apply"], project)
        assert code == 0, err
        assert out.split()[:3] == ["done", "up", "0001_notes.up.sql"]
        with local.primary.connect(user=OWNER) as conn:
            owner = conn.execute("SELECT tableowner::text FROM pg_tables WHERE tablename = 'notes'")
            assert owner.fetchone() == (OWNER,)
        assert local.password not in out + err
