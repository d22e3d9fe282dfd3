"""What the local pair needs from the machine: PostgreSQL's server binaries, the OS user the
servers run as (the unprivileged `postgres` user when this process is root), free loopback
ports, processes read from /proc, and waiting on a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import psycopg

from app.errors import DevDBError

RUN_AS_WHEN_ROOT = "postgres"
_BINARIES = ("initdb", "postgres", "pg_basebackup")
_PR_SET_PDEATHSIG = 1


def find_pg_bindir() -> Path:
    """Find a folder holding initdb, postgres and pg_basebackup, or say how to get them."""
    candidates: list[Path] = []
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0)
    )
    candidates.extend(Path(p) for p in reversed(debian))
    for folder in candidates:
        if all((folder / name).is_file() for name in _BINARIES):
            return folder
    raise DevDBError(
        "PostgreSQL server binaries (initdb, postgres, pg_basebackup) were not found on PATH, "
        "via pg_config or in /usr/lib/postgresql/*/bin; install them first "
        "(Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql)"
    )


class SpawnOptions(TypedDict):
    """Keyword arguments of subprocess.Popen that decide who a server runs as."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None
    preexec_fn: Callable[[], None] | None


@dataclass(frozen=True)
class RunAs:
    """The OS user the servers run as."""

    uid: int
    gid: int
    name: str

    @classmethod
    def for_this_process(cls) -> RunAs:
        """Ourselves, or the unprivileged `postgres` user when we are root."""
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name)
        try:
            entry = pwd.getpwnam(RUN_AS_WHEN_ROOT)
        except KeyError:
            raise DevDBError(
                "running as root, PostgreSQL needs an unprivileged user to run as: "
                f"create one named {RUN_AS_WHEN_ROOT!r} (useradd --system {RUN_AS_WHEN_ROOT})"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)

    @property
    def is_other(self) -> bool:
        """True when the servers run as another user than this process."""
        return self.uid != os.geteuid()

    def own(self, path: Path) -> None:
        """Give a file or folder to this user."""
        if self.is_other:
            os.chown(path, self.uid, self.gid)

    def check_reachable(self, path: Path) -> None:
        """Raise unless this user can walk down to `path` (a root-only temp dir is not)."""
        groups = {self.gid, *os.getgrouplist(self.name, self.gid)}
        for folder in [*reversed(path.resolve().parents), path.resolve()]:
            st = folder.stat()
            if st.st_uid == self.uid:
                ok = bool(st.st_mode & 0o100)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & 0o010)
            else:
                ok = bool(st.st_mode & 0o001)
            if not ok:
                raise DevDBError(
                    f"the PostgreSQL servers run as user {self.name!r}, who cannot enter "
                    f"{folder}; choose a folder it can reach (e.g. under /tmp)"
                )


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel kills the server if the thread
    # that started it dies, so a crashed test run cannot leak postgres processes.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_libc = ctypes.CDLL(None, use_errno=True)


def wait_until_answering(
    connect: Callable[[], psycopg.Connection[Any]],
    running: Callable[[], bool],
    name: str,
    log_tail: Callable[[], str],
    timeout: float,
) -> None:
    """Poll a server (or a pooler) with `SELECT 1` until it answers; DevDBError with its log
    tail when it exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if not running():
            raise DevDBError(f"{name} exited during start-up:\n{log_tail()}")
        try:
            with connect() as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise DevDBError(f"{name} not ready after {timeout:g} s:\n{log_tail()}") from None
            time.sleep(0.02)


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that nothing listens on now, all different."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on host:port now. SO_REUSEADDR, as PostgreSQL and
    uvicorn set it: connections of a server that just stopped linger in TIME_WAIT on its
    port, which would otherwise make it look taken for a minute."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def children_of(pid: int) -> list[int]:
    """Direct children of a process, read from /proc."""
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(Path(stat).parent.name))
    return kids


def alive(pid: int) -> bool:
    """True while a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def all_stopped(pids: list[int]) -> bool:
    """True once every process is stopped by a signal (or gone)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rfind(")") + 2] not in "TtZX":
            return False
    return True


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `condition` until it holds, or raise DevDBError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DevDBError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
