"""A local PostgreSQL primary with streaming mirrors, for `make run` and the tests.

The servers come from the machine's own PostgreSQL binaries, listen on free loopback ports
and keep their data under one directory. When this process is root they run as the
unprivileged `postgres` user, since PostgreSQL refuses to run as root. Every server is a
child of this process: `LocalPair.destroy()` (also run at exit, and by the kernel if the
starting thread dies) leaves no postgres process behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypedDict

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.errors import DevDBError

RUN_AS_WHEN_ROOT = "postgres"
# The pair's logins, as production should have them (README: Access): the superuser runs
# the servers' own business (replication, the harness) and nothing else; the owner of the
# application's schema runs migrations; the service logs in as an unprivileged login that
# may read and write the owner's tables (default privileges) and create nothing.
SUPERUSER = "postgres"
OWNER = "mirrorpool_owner"
SERVICE = "mirrorpool"
_BINARIES = ("initdb", "postgres", "pg_basebackup")
_PR_SET_PDEATHSIG = 1

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


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


def _children_of(pid: int) -> list[int]:
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


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `condition` until it holds, or raise DevDBError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DevDBError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


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
        return [] if pid is None else [pid, *_children_of(pid)]

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
        self._frozen = self.processes()
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

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


_live_pairs: weakref.WeakSet[LocalPair] = weakref.WeakSet()


@atexit.register
def _destroy_live_pairs() -> None:
    for pair in list(_live_pairs):
        pair.stop()


class LocalPair:
    """A primary and N streaming mirrors under `base_dir`, reused when already there."""

    def __init__(self, base_dir: Path, mirrors: int = 1, synchronous: bool = False) -> None:
        if mirrors < 0:
            raise DevDBError("mirrors must be 0 or more")
        self.base_dir = Path(base_dir).absolute()
        self.mirror_count = mirrors
        self.synchronous = synchronous
        self.bindir = find_pg_bindir()
        self.run_as = RunAs.for_this_process()
        self.password = ""
        self.passwords: dict[str, str] = {}
        self.nodes: list[LocalNode] = []
        # The node the others stream from: the primary, until a failover promoted a mirror
        # and start() rebuilt the old primary as its mirror (see heal()).
        self.leader_name = "primary"
        self.healed: str | None = None

    @classmethod
    def running(cls, base_dir: Path) -> LocalPair | None:
        """The pair kept under `base_dir` when every one of its servers answers now (started
        by another process, such as `make run`), without starting anything; else None."""
        if not (Path(base_dir) / "devdb.json").is_file():
            return None
        try:
            pair = cls(base_dir)
        except DevDBError:
            return None
        known = pair._load_state()
        if known is None or known.leader not in known.names:
            return None
        pair.mirror_count = len(known.names) - 1
        pair.password, pair.passwords = known.password, known.passwords
        pair.leader_name = known.leader
        pair.nodes = [LocalNode(pair, n, p) for n, p in zip(known.names, known.ports, strict=True)]
        for node in pair.nodes:
            try:
                with node.connect(timeout=2) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error:
                return None
        return pair

    def __enter__(self) -> LocalPair:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def migrations_dsn(self, dbname: str = "postgres") -> str:
        """The owner's login on whichever node accepts writes (libpq tries each in turn):
        what MIRRORPOOL_MIGRATIONS_DSN is set to, so migrations follow a promotion."""
        return make_conninfo(
            "",
            host=",".join("127.0.0.1" for _ in self.nodes),
            port=",".join(str(n.port) for n in self.nodes),
            user=OWNER,
            password=self.passwords[OWNER],
            dbname=dbname,
            target_session_attrs="read-write",
        )

    def password_of(self, user: str) -> str:
        """The password of one of the pair's logins."""
        return self.password if user == SUPERUSER else self.passwords[user]

    @property
    def primary(self) -> LocalNode:
        """The node created as the primary (it may since have been demoted by a promotion)."""
        return self.nodes[0]

    @property
    def mirrors(self) -> list[LocalNode]:
        """The nodes created as mirrors."""
        return self.nodes[1:]

    @property
    def leader(self) -> LocalNode:
        """The node the others stream from (the primary, unless a failover changed that)."""
        return self.node(self.leader_name)

    @property
    def followers(self) -> list[LocalNode]:
        """The nodes that stream from the leader."""
        return [n for n in self.nodes if n.name != self.leader_name]

    def node(self, name: str) -> LocalNode:
        """A node by name."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise DevDBError(f"no node named {name!r}")

    @property
    def state_file(self) -> Path:
        """Where the pair remembers its password and ports between runs."""
        return self.base_dir / "devdb.json"

    @property
    def passfile(self) -> Path:
        """A libpq password file for the pair, for psql and friends (PGPASSFILE)."""
        return self.base_dir / "pgpass"

    def spawn_options(self) -> SpawnOptions:
        """subprocess arguments that run a command as the servers' user."""
        other = self.run_as.is_other
        main = threading.current_thread() is threading.main_thread()
        return SpawnOptions(
            user=self.run_as.uid if other else None,
            group=self.run_as.gid if other else None,
            extra_groups=[] if other else None,
            preexec_fn=_die_with_parent if main else None,
        )

    def start(self) -> None:
        """Create the pair on first use, or start the existing one; wait until all serve."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.run_as.check_reachable(self.base_dir)
        (self.base_dir / "logs").mkdir(exist_ok=True)
        names = ["primary"] + (
            ["mirror"]
            if self.mirror_count == 1
            else [f"mirror{i + 1}" for i in range(self.mirror_count)]
        )
        known = self._load_state()
        if known and known.names != names:
            raise DevDBError(
                f"{self.base_dir} holds a pair with nodes {known.names}, not {names}; "
                "remove the folder to start over"
            )
        self.password = known.password if known else secrets.token_urlsafe(18)
        self.passwords = {
            login: (known.passwords.get(login) if known else None) or secrets.token_urlsafe(18)
            for login in (OWNER, SERVICE)
        }
        self.leader_name = known.leader if known else "primary"
        ports = known.ports if known else free_ports(len(names))
        if any(not port_is_free(p) for p in ports):
            ports = free_ports(len(names))
        self.nodes = [LocalNode(self, n, p) for n, p in zip(names, ports, strict=True)]
        _live_pairs.add(self)
        try:
            if not known:
                self._create()
            else:
                self._configure()
                for node in self.nodes:
                    node.start()
            self.healed = self.heal() if known else None
            leader = self.leader
            if not leader.in_recovery():
                self._set_up_logins(leader)
                if all(m.in_recovery() for m in self.followers):
                    wait_until(self.streaming, 30, f"the mirrors to stream from {leader.name}")
            self._save_state()
            self._write_passfile()
        except BaseException:
            self.stop("immediate")
            raise

    def streaming(self) -> bool:
        """True when every mirror streams from the primary (synchronously, if asked)."""
        with self.leader.connect() as conn:
            rows = conn.execute(
                "SELECT application_name, sync_state FROM pg_stat_replication"
                " WHERE state = 'streaming'"
            ).fetchall()
        wanted = "quorum" if self.synchronous else "async"
        return {(m.name, wanted) for m in self.followers} <= set(rows)

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop every server of the pair, keeping the files."""
        for node in reversed(self.nodes):
            try:
                node.stop(mode)
            except DevDBError:
                node.kill()

    def destroy(self) -> None:
        """Stop every server at once and delete the pair's folder."""
        self.stop("immediate")
        _live_pairs.discard(self)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _create(self) -> None:
        primary = self.primary
        pwfile = self.base_dir / "initdb.pw"
        pwfile.write_text(self.password)
        pwfile.chmod(0o600)
        self.run_as.own(pwfile)
        self._make_data_dir(primary)
        try:
            self._run(
                "initdb", "-D", str(primary.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                "--no-locale", "--no-sync", "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (primary.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'mirrorpool.conf'\n")
        self._configure_node(primary)
        primary.start()
        for mirror in self.mirrors:
            self._make_data_dir(mirror)
            self._run(
                "pg_basebackup", "-D", str(mirror.data_dir), "-h", "127.0.0.1",
                "-p", str(primary.port), "-U", SUPERUSER, "-X", "stream", "-c", "fast",
                "-C", "-S", mirror.name, "--no-sync",
            )  # fmt: skip
            (mirror.data_dir / "standby.signal").touch()
            self.run_as.own(mirror.data_dir / "standby.signal")
            self._configure_node(mirror)
            mirror.start()

    def heal(self) -> str | None:
        """Mend a pair split by a failover: when a promoted mirror and an old primary both
        accept writes, the one on the newest timeline leads and the others are rebuilt as
        its mirrors (pg_rewind, else a fresh base backup). One line saying what was done,
        or None when nothing was split."""
        writable = [n for n in self.nodes if not n.in_recovery()]
        if not writable:
            return None
        timelines = {n.name: n.timeline() for n in writable}
        newest = max(writable, key=lambda n: timelines[n.name])
        stale = [n for n in writable if n is not newest]
        if any(timelines[n.name] == timelines[newest.name] for n in stale):
            raise DevDBError(
                f"{', '.join(timelines)} all accept writes on timeline "
                f"{timelines[newest.name]}, so none can be told to follow the other; "
                f"remove {self.base_dir} to start over"
            )
        if newest.name == self.leader_name and not stale:
            return None
        moved = newest.name != self.leader_name
        self.leader_name = newest.name
        how = {n.name: self._rejoin(n, newest) for n in stale}
        if moved:
            # The mirrors that never diverged follow the new leader from here on.
            self._configure_node(newest)
            for node in self.followers:
                if node.name not in how:
                    self._ensure_slot(newest, node.name)
                    self._configure_node(node)
                    node.restart()
        if not stale:
            return f"{newest.name} leads since a failover; the mirrors now stream from it"
        return "; ".join(
            f"{name} accepted writes on timeline {timelines[name]}, {newest.name} on "
            f"{timelines[newest.name]} after a failover: rebuilt {name} as a mirror of "
            f"{newest.name} ({done})"
            for name, done in how.items()
        )

    def _rejoin(self, node: LocalNode, leader: LocalNode) -> str:
        """Rebuild `node` as a mirror of `leader`; say how."""
        node.stop("fast")
        self._ensure_slot(leader, node.name)
        source = make_conninfo("", host="127.0.0.1", port=leader.port, user=SUPERUSER)
        try:
            # Needs wal_log_hints (set on every node) on the old primary since before the
            # split; a pair from before that has none, hence the base backup below.
            self._run("pg_rewind", "-D", str(node.data_dir), f"--source-server={source}")
            how = "pg_rewind"
        except (DevDBError, OSError):
            shutil.rmtree(node.data_dir)
            self._make_data_dir(node)
            self._run(
                "pg_basebackup", "-D", str(node.data_dir), "-h", "127.0.0.1",
                "-p", str(leader.port), "-U", SUPERUSER, "-X", "stream", "-c", "fast",
                "-S", node.name, "--no-sync",
            )  # fmt: skip
            how = "a fresh base backup"
        (node.data_dir / "standby.signal").touch()
        self.run_as.own(node.data_dir / "standby.signal")
        # pg_rewind copied the leader's configuration: this node's own goes back.
        self._configure_node(node)
        node.start()
        # A slot the old primary kept for its mirror would hold WAL here for good.
        with node.connect() as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE NOT active"
            )
        return how

    def _ensure_slot(self, leader: LocalNode, name: str) -> None:
        with leader.connect() as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS"
                " (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                [name, name],
            )

    def create_demo(self, dbname: str = "postgres") -> bool:
        """The quick start's tables (users, orders, events, accounts) with a few rows,
        made once by the schema's owner, as a migration would (so the service's default
        privileges apply); True when made now."""
        with self.leader.connect(dbname, user=OWNER) as conn:
            row = conn.execute("SELECT to_regclass('public.users') IS NOT NULL").fetchone()
            if row and row[0]:
                return False
            conn.execute(DEMO_SQL)
        return True

    def env_lines(self) -> list[str]:
        """`.devdb/env`: the MIRRORPOOL_* DSNs of the pair (passwords from PGPASSFILE) and
        libpq's variables, for `source .devdb/env`, the CLI and psql."""
        service = [n.dsn(password=False, user=SERVICE) for n in self.nodes]
        owner = make_conninfo(
            "", host=",".join("127.0.0.1" for _ in self.nodes),
            port=",".join(str(n.port) for n in self.nodes), user=OWNER, dbname="postgres",
            target_session_attrs="read-write",
        )  # fmt: skip
        values = {
            "MIRRORPOOL_PRIMARY_DSN": service[0],
            "MIRRORPOOL_MIRROR_DSN": ",".join(service[1:]),
            "MIRRORPOOL_MIGRATIONS_DSN": owner,
            "PGPASSFILE": str(self.passfile),
            # psql reaches whichever node accepts writes, as the migrations do.
            "PGHOST": ",".join("127.0.0.1" for _ in self.nodes),
            "PGPORT": ",".join(str(n.port) for n in self.nodes),
            "PGTARGETSESSIONATTRS": "read-write",
            "PGUSER": OWNER,
            "PGDATABASE": "postgres",
        }
        return [
            "# The local pair of `mirrorpool dev` (make run): source it for mirrorpool and psql.",
            *(f"export {k}={shlex.quote(v)}" for k, v in values.items() if v),
        ]

    def _write_passfile(self) -> None:
        lines = [f"127.0.0.1:*:*:{SUPERUSER}:{self.password}"]
        lines += [f"127.0.0.1:*:*:{login}:{pw}" for login, pw in self.passwords.items()]
        self.passfile.write_text("\n".join(lines) + "\n")
        self.passfile.chmod(0o600)

    def _set_up_logins(self, primary: LocalNode) -> None:
        """Create (or bring up to date) the owner and service logins, and in `postgres` and
        `template1` (so every database made later has them too) the owner's schema with the
        service's privileges on what the owner creates there."""
        with primary.connect() as conn:
            for login in (OWNER, SERVICE):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login])
                verb = "ALTER" if exists.fetchone() else "CREATE"
                conn.execute(
                    sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                        sql.SQL(verb), sql.Identifier(login), sql.Literal(self.passwords[login])
                    )
                )
            # For POST /v1/admin/promote and MIRRORPOOL_PROMOTE_AFTER_S (refused to keys).
            conn.execute(f"GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {SERVICE}")
            # To terminate a key role's backend left running past its request's deadline
            # (app/cluster/backends.py); the service's own it may end without it.
            conn.execute(f"GRANT pg_signal_backend TO {SERVICE}")
        for dbname in ("postgres", "template1"):
            with primary.connect(dbname) as conn:
                conn.execute(LOGINS_SQL)

    def _configure(self) -> None:
        for node in self.nodes:
            if not (node.data_dir / "PG_VERSION").exists():
                raise DevDBError(f"{node.data_dir} is not a data folder; remove {self.base_dir}")
            self._configure_node(node)

    def _configure_node(self, node: LocalNode) -> None:
        settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "port": node.port,
            "unix_socket_directories": "",
            "max_connections": 200,
            "shared_buffers": "32MB",
            "wal_level": "replica",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "128MB",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_receiver_status_interval": "1s",
            "wal_retrieve_retry_interval": "200ms",
            # Test and development data: a power cut may lose it, a process crash never does.
            "fsync": "off",
            "log_line_prefix": "%m [%p] %q%a ",
            "synchronous_standby_names": (
                f"ANY 1 ({', '.join(m.name for m in self.followers)})"
                if self.synchronous and self.followers
                else ""
            ),
            # Lets pg_rewind turn an old primary into a mirror after a failover (heal()).
            "wal_log_hints": "on",
        }
        if node.name != self.leader_name:
            settings["primary_conninfo"] = make_conninfo(
                "", host="127.0.0.1", port=self.leader.port, user=SUPERUSER,
                password=self.password, application_name=node.name,
            )  # fmt: skip
            settings["primary_slot_name"] = node.name
        lines = []
        for key, value in settings.items():
            text = str(value).replace("'", "''")
            lines.append(f"{key} = '{text}'\n")
        conf = node.data_dir / "mirrorpool.conf"
        conf.write_text("".join(lines))
        conf.chmod(0o600)
        self.run_as.own(conf)

    def _make_data_dir(self, node: LocalNode) -> None:
        node.data_dir.mkdir(mode=0o700)
        self.run_as.own(node.data_dir)

    def _run(self, binary: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.password
        result = subprocess.run(
            [str(self.bindir / binary), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            cwd=self.base_dir,
            timeout=120,
            **self.spawn_options(),
        )
        if result.returncode != 0:
            raise DevDBError(f"{binary} failed ({result.returncode}): {result.stderr.strip()}")

    def _load_state(self) -> _State | None:
        try:
            raw = json.loads(self.state_file.read_text())
            return _State(
                names=[str(n) for n in raw["names"]],
                ports=[int(p) for p in raw["ports"]],
                password=str(raw["password"]),
                passwords={str(k): str(v) for k, v in raw.get("passwords", {}).items()},
                leader=str(raw.get("leader", "primary")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_state(self) -> None:
        state = _State(
            [n.name for n in self.nodes],
            [n.port for n in self.nodes],
            self.password,
            self.passwords,
            self.leader_name,
        )
        self.state_file.write_text(json.dumps(state.__dict__, indent=2))
        self.state_file.chmod(0o600)

    def processes(self) -> list[int]:
        """Pids of every server process of the pair: postmasters and their children."""
        return [pid for node in self.nodes for pid in node.processes()]


# The quick start's demo (README), created by the schema's owner.
DEMO_SQL = """
CREATE TABLE users (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users,
    status text NOT NULL,
    total numeric(10, 2) NOT NULL
);
CREATE TABLE events (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    day date NOT NULL,
    kind text NOT NULL
);
CREATE TABLE accounts (id int PRIMARY KEY, balance numeric(12, 2) NOT NULL);
INSERT INTO users (id, email, created_at) VALUES
    (42, 'ada@example.com', '2024-05-01 09:30:00.123456+00'),
    (43, 'grace@example.com', '2024-06-12 14:00:00+00'),
    (44, 'edsger@example.com', '2024-07-30 08:15:00+00');
SELECT setval(pg_get_serial_sequence('users', 'id'), 44);
INSERT INTO orders (user_id, status, total) VALUES
    (42, 'open', 19.99), (42, 'shipped', 5.00), (43, 'open', 120.50);
INSERT INTO events (day, kind) VALUES
    ('2024-05-01', 'signup'), ('2024-05-01', 'order'), ('2024-05-02', 'order');
INSERT INTO accounts VALUES (1, 100.00), (2, 100.00);
"""

# Run as the superuser in each database: the owner owns the schema the application uses;
# what it creates there, the service may use (and nothing else).
LOGINS_SQL = f"""
ALTER SCHEMA public OWNER TO {OWNER};
GRANT USAGE ON SCHEMA public TO {SERVICE};
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {SERVICE};
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {SERVICE};
"""


@dataclass
class _State:
    names: list[str]
    ports: list[int]
    password: str
    passwords: dict[str, str]
    leader: str = "primary"
