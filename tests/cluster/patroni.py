"""A real Patroni cluster for the tests: one etcd and two Patroni members, from Debian's packages.

Everything runs on 127.0.0.1, on free ports, under one folder, as the unprivileged user the
local pair's servers run as (app/devdb/system.py RunAs), with short timings (ttl 10 s, loop_wait
1 s, retry_timeout 3 s) so that a failover takes seconds. Replication is synchronous
(Patroni's synchronous_mode): a commit is acknowledged only once the replica has it, so an
acknowledged write lost in a failover is a fault of whoever routed it, not of asynchronous
replication. The service's logins are made as on the local pair (app/devdb/logins.py).

Install the packages with `apt-get install patroni etcd-server` (.ci/run does).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.devdb import (
    LOGINS_SQL,
    OWNER,
    SERVICE,
    SUPERUSER,
    RunAs,
    SpawnOptions,
    _die_with_parent,  # the local pair's own guard against leaked servers
    alive,
    find_pg_bindir,
    free_ports,
    wait_until,
)
from app.errors import DevDBError

# The programs the harness runs, and the Debian packages they come in.
PACKAGES = {"patroni": "patroni", "patronictl": "patroni", "etcd": "etcd-server"}
SCOPE = "mirrorpool-test"
TTL_S = 10
LOOP_WAIT_S = 1
RETRY_TIMEOUT_S = 3


def missing_packages() -> list[str]:
    """The Debian packages whose programs are not on PATH (empty when all are there)."""
    return sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})


def require_packages() -> None:
    """Raise, saying what to install, unless Patroni and etcd are installed."""
    if missing := missing_packages():
        raise DevDBError(
            f"the Patroni tests need {', '.join(missing)}: apt-get install -y {' '.join(missing)}"
            " (.ci/run installs them)"
        )


def _get_json(url: str, timeout: float = 1.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


class Member:
    """One Patroni member: its PostgreSQL server and the Patroni process that runs it."""

    def __init__(self, cluster: PatroniCluster, name: str, pg_port: int, rest_port: int) -> None:
        self.cluster = cluster
        self.name = name
        self.pg_port = pg_port
        self.rest_port = rest_port
        self.folder = cluster.base_dir / name
        self.data_dir = self.folder / "data"
        self.config_path = cluster.base_dir / f"{name}.yml"
        self.log_path = cluster.base_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Member {self.name} 127.0.0.1:{self.pg_port}>"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A libpq DSN for this member's server as `user`."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.pg_port, dbname=dbname, user=user,
            password=self.cluster.passwords[user],
        )  # fmt: skip

    def connect(self, user: str = SUPERUSER) -> psycopg.Connection[Any]:
        """An autocommit connection to this member's server."""
        return psycopg.connect(self.dsn(user=user), autocommit=True, connect_timeout=2)

    def postmaster_pid(self) -> int | None:
        """The pid of the member's postmaster while one runs."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def start(self) -> None:
        """Start the member's Patroni (it starts, bootstraps or rejoins PostgreSQL itself)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PATRONI"))}
        log: IO[bytes] = self.log_path.open("ab")
        with log:
            self.proc = subprocess.Popen(
                ["patroni", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=self.folder, **self.cluster.spawn,
            )  # fmt: skip

    def crash(self) -> None:
        """kill -9 of Patroni and of the postmaster with every backend, at once."""
        victims = [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []
        if (pid := self.postmaster_pid()) is not None:
            victims += [pid, *_children(pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in victims), 10, f"{self.name}'s processes")

    def state(self) -> dict[str, Any] | None:
        """Patroni's own view of this member (GET /patroni), or None if it does not answer."""
        try:
            result: dict[str, Any] = _get_json(f"http://127.0.0.1:{self.rest_port}/patroni")
        except (OSError, ValueError):
            return None
        return result

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Patroni's log (PostgreSQL's own goes there too)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _children(pid: int) -> list[int]:
    """Every descendant of a process, read from /proc."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
            child = int(stat.parent.name)
            found += [child, *_children(child)]
    return found


class PatroniCluster:
    """etcd and two Patroni members under `base_dir`, started by start(), gone after destroy()."""

    def __init__(self, base_dir: Path) -> None:
        require_packages()
        self.base_dir = base_dir.absolute()
        self.run_as = RunAs.for_this_process()
        other = self.run_as.is_other
        self.spawn = SpawnOptions(
            user=self.run_as.uid if other else None,
            group=self.run_as.gid if other else None,
            extra_groups=[] if other else None,
            preexec_fn=_die_with_parent,
        )
        self.passwords = {
            login: secrets.token_urlsafe(18) for login in (SUPERUSER, "replicator", OWNER, SERVICE)
        }
        ports = free_ports(6)
        self.etcd_port, self.etcd_peer_port = ports[:2]
        self.members = [
            Member(self, "p0", ports[2], ports[3]),
            Member(self, "p1", ports[4], ports[5]),
        ]
        self.etcd: subprocess.Popen[bytes] | None = None
        self.etcd_frozen = False

    def __enter__(self) -> PatroniCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def member(self, name: str) -> Member:
        """A member by name."""
        return next(m for m in self.members if m.name == name)

    def start(self, timeout: float = 60.0) -> None:
        """Start etcd, bootstrap the first member, let the second join; wait until healthy."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        self.run_as.check_reachable(self.base_dir)
        self.run_as.own(self.base_dir)
        try:
            self._start_etcd()
            for member in self.members:
                member.folder.mkdir(mode=0o700, exist_ok=True)
                self.run_as.own(member.folder)
                member.config_path.write_text(json.dumps(self._config(member), indent=2))
                member.config_path.chmod(0o600)
                self.run_as.own(member.config_path)
            self.members[0].start()
            wait_until(lambda: self.leader() is self.members[0], timeout, "the first leader")
            self._set_up_logins(self.members[0])
            for member in self.members[1:]:
                member.start()
            self.wait_healthy(timeout)
        except BaseException:
            self.destroy(keep_files=True)
            raise

    def _start_etcd(self) -> None:
        data = self.base_dir / "etcd"
        data.mkdir(mode=0o700, exist_ok=True)
        self.run_as.own(data)
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        log: IO[bytes] = (self.base_dir / "etcd.log").open("ab")
        with log:
            self.etcd = subprocess.Popen(
                ["etcd", "--name", "e0", "--data-dir", str(data),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"e0={peer}", "--initial-cluster-state", "new",
                 "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **self.spawn,
            )  # fmt: skip

        def answering() -> bool:
            try:
                return bool(_get_json(f"{client}/health").get("health") == "true")
            except (OSError, ValueError):
                return False

        wait_until(answering, 30, "etcd", interval=0.05)

    def _config(self, member: Member) -> dict[str, Any]:
        pg_hba = [
            "local all all trust",
            "host replication replicator 127.0.0.1/32 scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        auth = {
            "superuser": {"username": SUPERUSER, "password": self.passwords[SUPERUSER]},
            "replication": {"username": "replicator", "password": self.passwords["replicator"]},
            "rewind": {"username": SUPERUSER, "password": self.passwords[SUPERUSER]},
        }
        return {
            "scope": SCOPE,
            "name": member.name,
            "restapi": {
                "listen": f"127.0.0.1:{member.rest_port}",
                "connect_address": f"127.0.0.1:{member.rest_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL_S,
                    "loop_wait": LOOP_WAIT_S,
                    "retry_timeout": RETRY_TIMEOUT_S,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "remove_data_directory_on_rewind_failure": True,
                        "remove_data_directory_on_diverged_timelines": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_connections": 100,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                            "wal_receiver_status_interval": "1s",
                            "wal_retrieve_retry_interval": "200ms",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "no-locale", "no-sync"],
                "pg_hba": pg_hba,
            },
            "postgresql": {
                "listen": f"127.0.0.1:{member.pg_port}",
                "connect_address": f"127.0.0.1:{member.pg_port}",
                "data_dir": str(member.data_dir),
                "bin_dir": str(find_pg_bindir()),
                "pgpass": str(member.folder / "pgpass"),
                "authentication": auth,
                "pg_hba": pg_hba,
                "parameters": {
                    "unix_socket_directories": str(member.folder),
                    "shared_buffers": "32MB",
                    # Test data: a power cut may lose it, a process crash never does.
                    "fsync": "off",
                    "log_line_prefix": "%m [%p] %q%a ",
                },
            },
            "tags": {},
        }

    def _set_up_logins(self, leader: Member) -> None:
        """The owner and service logins and the owner's schema, as on the local pair."""
        with leader.connect() as conn:
            for login in (OWNER, SERVICE):
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(login), sql.Literal(self.passwords[login])
                    )
                )
            conn.execute(LOGINS_SQL)

    def cluster_state(self) -> list[dict[str, Any]]:
        """Patroni's members list (GET /cluster) from any member that answers."""
        for member in self.members:
            try:
                members: list[dict[str, Any]] = _get_json(
                    f"http://127.0.0.1:{member.rest_port}/cluster"
                )["members"]
            except (OSError, ValueError, KeyError):
                continue
            return members
        return []

    def leader(self) -> Member | None:
        """The member Patroni reports as the running leader, if one is."""
        for entry in self.cluster_state():
            if entry.get("role") == "leader" and entry.get("state") == "running":
                return self.member(entry["name"])
        return None

    def healthy(self) -> bool:
        """One running leader whose every other member streams from it synchronously."""
        states = self.cluster_state()
        leader = self.leader()
        if leader is None or len(states) != len(self.members):
            return False
        if any(s.get("state") != "running" for s in states):
            return False
        # In synchronous mode Patroni promotes only the member it recorded as sync standby.
        if any(s.get("role") != "sync_standby" for s in states if s["name"] != leader.name):
            return False
        try:
            with leader.connect() as conn:
                rows = conn.execute(
                    "SELECT application_name FROM pg_stat_replication"
                    " WHERE state = 'streaming' AND sync_state = 'sync'"
                ).fetchall()
        except psycopg.Error:
            return False
        return {r[0] for r in rows} == {m.name for m in self.members if m is not leader}

    def wait_healthy(self, timeout: float = 60.0, leader: Member | None = None) -> Member:
        """Wait until healthy() (with `leader` as the leader, if given); the leader."""

        def done() -> bool:
            return (leader is None or self.leader() is leader) and self.healthy()

        try:
            wait_until(done, timeout, "a healthy Patroni cluster", interval=0.1)
        except DevDBError as exc:
            logs = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in self.members)
            raise DevDBError(f"{exc}: {self.cluster_state()}\n{logs}") from None
        leader = self.leader()
        assert leader is not None
        return leader

    def replica(self) -> Member:
        """A member that is not the leader."""
        leader = self.leader()
        return next(m for m in self.members if m is not leader)

    def patronictl(self, *args: str) -> str:
        """Run patronictl against the cluster; its output."""
        result = subprocess.run(
            ["patronictl", "-c", str(self.members[0].config_path), *args],
            capture_output=True, text=True, timeout=60, check=False, **self.spawn,
        )  # fmt: skip
        if result.returncode != 0:
            raise DevDBError(f"patronictl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def switchover(self, candidate: Member) -> None:
        """`patronictl switchover` from the leader to `candidate`, without asking."""
        leader = self.leader()
        assert leader is not None
        self.patronictl(
            "switchover", SCOPE, "--leader", leader.name, "--candidate", candidate.name, "--force"
        )

    def freeze_etcd(self) -> None:
        """SIGSTOP etcd: Patroni can neither read nor renew its leader key."""
        assert self.etcd is not None
        os.kill(self.etcd.pid, signal.SIGSTOP)
        self.etcd_frozen = True

    def thaw_etcd(self) -> None:
        """SIGCONT etcd."""
        if self.etcd is not None and self.etcd_frozen:
            os.kill(self.etcd.pid, signal.SIGCONT)
        self.etcd_frozen = False

    def destroy(self, keep_files: bool = False) -> None:
        """Stop every process of the cluster (and, unless `keep_files`, delete its folder)."""
        self.thaw_etcd()
        for member in self.members:
            # Test data only: a crash is as good as a clean stop, and seconds quicker.
            member.crash()
        if self.etcd is not None:
            self.etcd.kill()
            self.etcd.wait(10)
            self.etcd = None
        if not keep_files:
            shutil.rmtree(self.base_dir, ignore_errors=True)
