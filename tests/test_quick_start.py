"""The README's quick start, as a newcomer follows it, in a fresh clone of this repository:
`make run`, the "Two commands" curls verbatim with the printed key, every request example of
/openapi.json, the CLI against the running pair, a busy port, a failover and the heal on the
next `make run`, and `make test` stopping when a system tool is missing.

The clone gets a virtualenv of its own whose packages come from this test run's (a .pth
line), so the Makefile's install step runs for real (and says so) without a minute of pip;
everything else is the clone's own files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.devdb import free_ports
from tests.waiting import eventually_sync

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clone(work_dir: Path) -> Iterator[Path]:
    """A fresh clone of this repository, with an empty virtualenv that sees our packages."""
    folder = work_dir / "newcomer-fresh"
    subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "venv", str(folder / ".venv")], check=True, timeout=60)
    packages = sysconfig.get_paths()["purelib"]
    site = next((folder / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "the-test-runs-packages.pth").write_text(packages + "\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def newcomer_env(**extra: str) -> dict[str, str]:
    """The environment of a shell with nothing of mirrorpool's or libpq's set, and outside
    any make (under `make test`, MAKELEVEL and MAKEFLAGS would make the clone's make a
    sub-make, which prints "Entering directory" lines a newcomer's shell never shows)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MIRRORPOOL_", "PG"))
        and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")
    }
    return env | extra


class MakeRun:
    """`make run` in the clone, in a session of its own (Ctrl-C reaches make and its child)."""

    def __init__(self, clone: Path, port: int, **env: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["make", "run"], cwd=clone, env=newcomer_env(MIRRORPOOL_PORT=str(port), **env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip().startswith("key:"):
                break
        else:
            raise AssertionError("make run ended early:\n" + "\n".join(self.lines))
        self.key = self.lines[-1].split()[1]

    def ports(self) -> list[str]:
        """The ports of the primary and mirror lines of the banner."""
        words = [line.split() for line in self.lines]
        return [
            next(w for w in ws if w.startswith("port="))
            for ws in words
            if ws and ws[0] in {"primary", "mirror"}
        ]

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(self.url + "/health", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return None

    def wait_healthy(self, timeout: float = 60) -> float:
        """Seconds from `make run` to /health `ok`."""
        eventually_sync(lambda: (self.health() or {}).get("status") == "ok", "health ok", timeout)
        return time.monotonic() - self.started

    def stop(self) -> None:
        """Ctrl-C, as a person would."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


def readme_section(title: str, until: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n{title}\n")
    return text[start : text.index(f"\n{until}", start)]


def shell_commands(section: str) -> list[str]:
    """The commands of the section's ```sh blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip():
                commands.append(command)
    return commands


def run_verbatim(command: str, run: MakeRun, cwd: Path) -> str:
    """A README command as a shell runs it, with `key` set and the test's port for 8000."""
    done = subprocess.run(
        ["bash", "-c", command.replace("localhost:8000", f"localhost:{run.port}")],
        cwd=cwd, env=newcomer_env(key=run.key), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, (command, done.stderr)
    return done.stdout


def test_quick_start_from_a_fresh_clone(clone: Path) -> None:
    port = free_ports(1)[0]
    run = MakeRun(clone, port)
    try:
        # The first run says what it installs before pip starts.
        assert run.lines[0].startswith("Installing mirrorpool and its development tools"), run.lines
        assert any("source .devdb/env" in line for line in run.lines)
        took = run.wait_healthy()

        # Every curl of "Two commands" runs verbatim (key=... is the one line we fill in).
        commands = shell_commands(readme_section("## Two commands", "### A failover, locally"))
        curls = [c for c in commands if c.startswith("curl")]
        assert len(curls) >= 4
        for curl in curls:
            answer = json.loads(run_verbatim(curl, run, clone))
            assert not str(answer.get("type", "")).startswith("urn:mirrorpool:problem"), answer
            assert answer.get("status") == "ok" or answer["row_count"] >= 1, (curl, answer)

        # Every request example of /openapi.json answers 2xx against the pair's demo tables.
        auth = {"Authorization": f"Bearer {run.key}"}
        document = httpx.get(run.url + "/openapi.json", timeout=5).json()
        tried = 0
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                content = operation.get("requestBody", {}).get("content", {})
                for name, example in (
                    content.get("application/json", {}).get("examples", {}).items()
                ):
                    url = run.url + fill_path(path, operation)
                    answer = httpx.request(method, url, json=example["value"], headers=auth)
                    assert answer.is_success, (method, path, name, answer.text)
                    tried += 1
        assert tried >= 8

        # The CLI, from the project folder with nothing set, finds the pair and says so.
        status = subprocess.run(
            [".venv/bin/mirrorpool", "migrate", "status"], cwd=clone, env=newcomer_env(),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "using the local pair running in .devdb/" in status.stderr

        # A second `make run` on the same port stops before anything starts, in one line.
        busy = subprocess.run(
            ["make", "run"], cwd=clone, env=newcomer_env(MIRRORPOOL_PORT=str(port)),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert busy.returncode != 0
        ours = [
            line for line in (busy.stdout + busy.stderr).splitlines()
            if line.startswith("mirrorpool")
        ]  # fmt: skip
        assert len(ours) == 1 and "MIRRORPOOL_PORT" in ours[0], busy.stdout + busy.stderr
        assert "key:" not in busy.stdout
    finally:
        run.stop()
    assert took < 60


def fill_path(path: str, operation: dict[str, Any]) -> str:
    """The path with each path parameter replaced by its documented example."""
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            example = parameter["schema"].get("examples", parameter.get("examples"))
            assert example, (path, parameter["name"], "has no example")
            value = example[0] if isinstance(example, list) else next(iter(example.values()))
            path = path.replace("{" + parameter["name"] + "}", str(value))
    return path


def test_a_failover_then_the_next_make_run_heals_the_pair(clone: Path) -> None:
    port = free_ports(1)[0]
    run = MakeRun(clone, port)
    try:
        run.wait_healthy()
        ports = run.ports()
        # "A failover, locally", verbatim: stop the primary, promote the mirror.
        commands = shell_commands(readme_section("### A failover, locally", "## "))
        assert commands[0].startswith("kill -INT")
        for command in commands:
            run_verbatim(command, run, clone)
        eventually_sync(lambda: (run.health() or {}).get("writer") == "mirror", "the promotion")
        write = {"sql": "INSERT INTO events (day, kind) VALUES (now(), 'after failover')"}
        auth = {"Authorization": f"Bearer {run.key}"}
        answer = httpx.post(run.url + "/v1/query", json=write, headers=auth, timeout=10)
        assert answer.status_code == 200 and answer.json()["node"] == "mirror"
    finally:
        run.stop()
    again = MakeRun(clone, port)
    try:
        took = again.wait_healthy()
        # One line says what was healed, before the banner (after make's echo of the command).
        assert again.lines[0] == ".venv/bin/mirrorpool dev"
        assert again.lines[1] == (
            "local pair: primary accepted writes on timeline 1, mirror on 2 after a failover: "
            "rebuilt primary as a mirror of mirror (pg_rewind)"
        ), again.lines
        assert again.ports() == ports  # the same ports as before
        health = again.health() or {}
        assert health["writer"] == "mirror"
        assert {n["name"]: n["role"] for n in health["nodes"]} == {
            "primary": "mirror",
            "mirror": "primary",
        }
    finally:
        again.stop()
    assert took < 60


def test_make_test_stops_before_anything_when_a_tool_is_missing(clone: Path) -> None:
    # As a user who may not install packages (anyone but root): one line, then nothing.
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "make", "test",
         "TOOLS=mp-no-such-tool:mp-no-such-package"],
        cwd=clone, env=newcomer_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    output = (done.stdout + done.stderr).splitlines()
    ours = [line for line in output if not line.startswith("make: ")]
    assert ours == [
        "make test: missing mp-no-such-tool; install them first: "
        "sudo apt-get install mp-no-such-package"
    ], output
    assert not any("ruff" in line or "pytest" in line for line in output)
    # With every tool there (this machine), the check says nothing and lets the rest run.
    present = subprocess.run(
        ["make", "tools"], cwd=clone, env=newcomer_env(), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert present.returncode == 0, present.stderr
    assert shlex.split(present.stdout) == []
