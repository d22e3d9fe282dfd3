"""A real PgBouncer in transaction mode in front of a LocalPair's primary, for the tests.

Debian's `pgbouncer` binary, run as the user the pair's servers run as (PgBouncer, like
PostgreSQL, refuses to run as root), listening on a free loopback port, authenticating
clients with SCRAM against an auth_file that holds the pair's password. Its pool is kept
small, so the server connections behind it really are shared between client connections.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from pathlib import Path
from typing import IO

import psycopg
from psycopg.conninfo import make_conninfo

from app.devdb import SERVICE, SUPERUSER, LocalPair, free_ports, wait_until_answering
from app.errors import DevDBError

INSTALL_HINT = (
    "PgBouncer is needed by the PgBouncer tests and was not found on PATH or in /usr/sbin: "
    "install it (Debian/Ubuntu: apt-get install pgbouncer; macOS: brew install pgbouncer); "
    "make test installs it when missing (tests/tools.sh)"
)
_WELL_KNOWN = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


class PgBouncerMissing(Exception):
    """The pgbouncer binary is not installed."""


class PgBouncerFailed(Exception):
    """PgBouncer did not start, or died; the message carries its log's tail."""


def find_pgbouncer() -> Path:
    """The pgbouncer binary, or PgBouncerMissing saying how to install it."""
    found = shutil.which("pgbouncer")
    for candidate in ([found] if found else []) + list(_WELL_KNOWN):
        if Path(candidate).is_file():
            return Path(candidate)
    raise PgBouncerMissing(INSTALL_HINT)


class LocalPgBouncer:
    """PgBouncer in front of `pair`'s primary: transaction pooling, `pool_size` server
    connections per database and user, any database name passed through."""

    def __init__(self, pair: LocalPair, folder: Path, *, pool_size: int = 2) -> None:
        self.binary = find_pgbouncer()
        self.pair = pair
        self.folder = folder
        self.pool_size = pool_size
        self.port = 0
        self.log_path = folder / "pgbouncer.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalPgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A DSN for a database through PgBouncer (it carries the password: a secret)."""
        return make_conninfo(
            "",
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=self.pair.password_of(user),
            dbname=dbname,
        )

    def start(self, timeout: float = 15.0) -> None:
        """Write the configuration, start PgBouncer and wait until it passes a query through."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        users = "".join(
            f'"{user}" "{self.pair.password_of(user)}"\n' for user in (SUPERUSER, SERVICE)
        )
        auth_file = self._private("userlist.txt", users)
        config = self._private(
            "pgbouncer.ini",
            f"""\
[databases]
* = host=127.0.0.1 port={self.pair.primary.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth_file}
admin_users = {SUPERUSER}
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
server_round_robin = 0
""",
        )
        log: IO[bytes] = self.log_path.open("ab")
        with log:
            self._proc = subprocess.Popen(
                [str(self.binary), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.pair.spawn_options(),
            )
        self._wait_ready(timeout)

    def _private(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.write_text(text)
        path.chmod(0o600)
        self.pair.run_as.own(path)
        return path

    def _wait_ready(self, timeout: float) -> None:
        try:
            wait_until_answering(
                lambda: psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True),
                lambda: self._proc is not None and self._proc.poll() is None,
                "pgbouncer",
                self.log_tail,
                timeout,
            )
        except DevDBError as exc:
            raise PgBouncerFailed(str(exc)) from None

    def admin(self, command: str) -> list[dict[str, object]]:
        """Run a command on PgBouncer's admin console (`SHOW SERVERS`, ...) as dicts."""
        with psycopg.connect(self.dsn("pgbouncer"), autocommit=True) as conn:
            result = conn.pgconn.exec_(command.encode())
            names = [result.fname(i) or b"" for i in range(result.nfields)]
            return [
                {
                    names[col].decode(): (value.decode() if value is not None else None)
                    for col in range(result.nfields)
                    for value in [result.get_value(row, col)]
                }
                for row in range(result.ntuples)
            ]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop PgBouncer (SIGTERM, then SIGKILL if it lingers) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of PgBouncer's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
