"""One PostgreSQL server of the local pair: its data folder, port and postmaster process, and
what the tests do to it (stop, kill, freeze, promote)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import psycopg
from psycopg.conninfo import make_conninfo

from app.devdb.logins import SUPERUSER
from app.devdb.system import alive, all_stopped, children_of, wait_until, wait_until_answering

if TYPE_CHECKING:
    from app.devdb.pair import LocalPair

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


class LocalNode:
    """One PostgreSQL server of a LocalPair: its data folder, port and process."""

    def __init__(self, pair: LocalPair, name: str, port: int) -> None:
        self.pair = pair
        self.name = name
        self.port = port
        self.data_dir = pair.base_dir / name
        self.log_path = pair.base_dir / "logs" / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []

    def __repr__(self) -> str:
        return f"<LocalNode {self.name} 127.0.0.1:{self.port}>"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def processes(self) -> list[int]:
        """Pids of the postmaster and its children, while it runs."""
        pid = self.pid
        return [] if pid is None else [pid, *children_of(pid)]

    @property
    def running(self) -> bool:
        """True while the postmaster process exists (frozen included)."""
        return self.pid is not None

    def dsn(self, dbname: str = "postgres", *, password: bool = True, user: str = SUPERUSER) -> str:
        """A libpq DSN for this server as `user` (SUPERUSER, OWNER or SERVICE);
        `password=False` leaves the secret out."""
        params: dict[str, str | int] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": user,
            "dbname": dbname,
        }
        if password:
            params["password"] = self.pair.password_of(user)
        return make_conninfo("", **params)

    def connect(
        self, dbname: str = "postgres", timeout: int = 5, *, user: str = SUPERUSER
    ) -> psycopg.Connection:
        """An autocommit connection to this server as `user`."""
        return psycopg.connect(
            self.dsn(dbname, user=user), connect_timeout=timeout, autocommit=True
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (if it is not running) and wait until it takes connections."""
        if self.running:
            return
        self._clear_stale_pid_file()
        log: IO[bytes] = self.log_path.open("ab")
        with log:
            self._proc = subprocess.Popen(
                [str(self.pair.bindir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.pair.spawn_options(),
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the server answers a query; raise with its log tail if it dies."""
        wait_until_answering(
            lambda: self.connect(timeout=2),
            lambda: self.running,
            self.name,
            self.log_tail,
            timeout,
        )

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Shut the server down the way `pg_ctl stop -m MODE` does, and wait for it."""
        if self._proc is None:
            return
        self.thaw()
        if self._proc.poll() is None:
            self._proc.send_signal(_STOP_SIGNALS[mode])
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._proc = None

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and every backend at once."""
        if self._proc is None:
            return
        victims = self.processes()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None
        self._frozen = []
        wait_until(lambda: not any(alive(p) for p in victims), 10, f"{self.name}'s processes")
        self._clear_stale_pid_file()

    def freeze(self) -> None:
        """SIGSTOP the server and its backends: connections stay open but nothing answers."""
        if self._proc is None or self._frozen:
            return
        # The postmaster first, and only once it has stopped (it may be in
        # the middle of a fork) list its children, until the listing holds
        # still: a backend forked meanwhile would otherwise go on answering.
        held: list[int] = []
        while new := [pid for pid in self.processes() if pid not in held]:
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            held += new
            wait_until(partial(all_stopped, new), 5, f"{self.name} to stop")
        self._frozen = held

    def thaw(self) -> None:
        """SIGCONT what freeze() stopped."""
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    @property
    def frozen(self) -> bool:
        """True between freeze() and thaw()."""
        return bool(self._frozen)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (fast) if running, then start again."""
        self.stop("fast")
        self.start(timeout)

    def in_recovery(self) -> bool:
        """pg_is_in_recovery() of this server."""
        with self.connect() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def timeline(self) -> int:
        """The timeline this server writes (a primary) or replays (a mirror)."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT CASE WHEN pg_is_in_recovery()"
                " THEN (SELECT timeline_id FROM pg_control_checkpoint())"
                " ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
                " END"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def promote(self, timeout: float = 30.0) -> None:
        """Promote this mirror to a primary and wait until it accepts writes."""
        with self.connect() as conn:
            conn.execute("SELECT pg_promote(true, %s)", [int(timeout)])
        wait_until(lambda: not self.in_recovery(), timeout, f"{self.name} to leave recovery")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _clear_stale_pid_file(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if alive(pid) and str(self.data_dir) in Path(f"/proc/{pid}/cmdline").read_text():
            # Left running by an earlier process that died without stopping it.
            os.kill(pid, signal.SIGQUIT)
            wait_until(lambda: not alive(pid), 30, f"the old {self.name} server to exit")
        pid_file.unlink(missing_ok=True)
