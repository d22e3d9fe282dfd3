"""LocalPair: a primary and N streaming mirrors under one folder, created on first use,
started again from the same folder later, and mended after a failover (heal)."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import threading
import weakref
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from app.devdb.files import (
    env_file_lines,
    load_state,
    save_state,
    write_node_conf,
    write_passfile,
)
from app.devdb.logins import DEMO_SQL, OWNER, SERVICE, SUPERUSER, set_up_logins
from app.devdb.node import LocalNode, StopMode
from app.devdb.system import (
    RunAs,
    SpawnOptions,
    _die_with_parent,
    find_pg_bindir,
    free_ports,
    port_is_free,
    wait_until,
)
from app.errors import DevDBError

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
        known = load_state(pair.state_file)
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
        known = load_state(self.state_file)
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
                set_up_logins(leader, self.passwords)
                if all(m.in_recovery() for m in self.followers):
                    wait_until(self.streaming, 30, f"the mirrors to stream from {leader.name}")
            save_state(self)
            write_passfile(self)
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
        write_node_conf(self, primary)
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
            write_node_conf(self, mirror)
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
            write_node_conf(self, newest)
            for node in self.followers:
                if node.name not in how:
                    self._ensure_slot(newest, node.name)
                    write_node_conf(self, node)
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
        write_node_conf(self, node)
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

    def _configure(self) -> None:
        for node in self.nodes:
            if not (node.data_dir / "PG_VERSION").exists():
                raise DevDBError(f"{node.data_dir} is not a data folder; remove {self.base_dir}")
            write_node_conf(self, node)

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

    def env_lines(self) -> list[str]:
        """`.devdb/env`: the MIRRORPOOL_* DSNs of the pair (passwords from PGPASSFILE) and
        libpq's variables, for `source .devdb/env`, the CLI and psql."""
        return env_file_lines(self)

    def processes(self) -> list[int]:
        """Pids of every server process of the pair: postmasters and their children."""
        return [pid for node in self.nodes for pid in node.processes()]
