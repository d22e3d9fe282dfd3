"""What the local pair keeps in its folder besides the servers' data: its ports and passwords
(devdb.json), a libpq password file (pgpass), `.devdb/env` for a shell, and each server's
own settings (mirrorpool.conf)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg.conninfo import make_conninfo

from app.devdb.logins import OWNER, SERVICE, SUPERUSER

if TYPE_CHECKING:
    from app.devdb.node import LocalNode
    from app.devdb.pair import LocalPair


@dataclass
class State:
    """What devdb.json remembers of a pair between runs."""

    names: list[str]
    ports: list[int]
    password: str
    passwords: dict[str, str]
    leader: str = "primary"


def load_state(path: Path) -> State | None:
    """The state kept at `path`, or None when there is none (or it cannot be read)."""
    try:
        raw = json.loads(path.read_text())
        return State(
            names=[str(n) for n in raw["names"]],
            ports=[int(p) for p in raw["ports"]],
            password=str(raw["password"]),
            passwords={str(k): str(v) for k, v in raw.get("passwords", {}).items()},
            leader=str(raw.get("leader", "primary")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_state(pair: LocalPair) -> None:
    """Remember the pair's nodes, ports, passwords and leader in its state file."""
    state = State(
        [n.name for n in pair.nodes],
        [n.port for n in pair.nodes],
        pair.password,
        pair.passwords,
        pair.leader_name,
    )
    pair.state_file.write_text(json.dumps(state.__dict__, indent=2))
    pair.state_file.chmod(0o600)


def env_file_lines(pair: LocalPair) -> list[str]:
    """`.devdb/env`: the MIRRORPOOL_* DSNs of the pair (passwords from PGPASSFILE) and
    libpq's variables, for `source .devdb/env`, the CLI and psql."""
    service = [n.dsn(password=False, user=SERVICE) for n in pair.nodes]
    owner = make_conninfo(
        "", host=",".join("127.0.0.1" for _ in pair.nodes),
        port=",".join(str(n.port) for n in pair.nodes), user=OWNER, dbname="postgres",
        target_session_attrs="read-write",
    )  # fmt: skip
    values = {
        "MIRRORPOOL_PRIMARY_DSN": service[0],
        "MIRRORPOOL_MIRROR_DSN": ",".join(service[1:]),
        "MIRRORPOOL_MIGRATIONS_DSN": owner,
        "PGPASSFILE": str(pair.passfile),
        # psql reaches whichever node accepts writes, as the migrations do.
        "PGHOST": ",".join("127.0.0.1" for _ in pair.nodes),
        "PGPORT": ",".join(str(n.port) for n in pair.nodes),
        "PGTARGETSESSIONATTRS": "read-write",
        "PGUSER": OWNER,
        "PGDATABASE": "postgres",
    }
    return [
        "# The local pair of `mirrorpool dev` (make run): source it for mirrorpool and psql.",
        *(f"export {k}={shlex.quote(v)}" for k, v in values.items() if v),
    ]


def write_passfile(pair: LocalPair) -> None:
    """The pair's pgpass: every login's password, readable by this user only."""
    lines = [f"127.0.0.1:*:*:{SUPERUSER}:{pair.password}"]
    lines += [f"127.0.0.1:*:*:{login}:{pw}" for login, pw in pair.passwords.items()]
    pair.passfile.write_text("\n".join(lines) + "\n")
    pair.passfile.chmod(0o600)


def write_node_conf(pair: LocalPair, node: LocalNode) -> None:
    """A server's own settings (mirrorpool.conf, included by its postgresql.conf): its port,
    replication, and for a follower where it streams from."""
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
            f"ANY 1 ({', '.join(m.name for m in pair.followers)})"
            if pair.synchronous and pair.followers
            else ""
        ),
        # Lets pg_rewind turn an old primary into a mirror after a failover (heal()).
        "wal_log_hints": "on",
    }
    if node.name != pair.leader_name:
        settings["primary_conninfo"] = make_conninfo(
            "", host="127.0.0.1", port=pair.leader.port, user=SUPERUSER,
            password=pair.password, application_name=node.name,
        )  # fmt: skip
        settings["primary_slot_name"] = node.name
    lines = []
    for key, value in settings.items():
        text = str(value).replace("'", "''")
        lines.append(f"{key} = '{text}'\n")
    conf = node.data_dir / "mirrorpool.conf"
    conf.write_text("".join(lines))
    conf.chmod(0o600)
    pair.run_as.own(conf)
