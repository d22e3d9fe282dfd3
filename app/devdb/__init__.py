"""A local PostgreSQL primary with streaming mirrors, for `make run` and the tests.

The servers come from the machine's own PostgreSQL binaries, listen on free loopback ports
and keep their data under one directory. When this process is root they run as the
unprivileged `postgres` user, since PostgreSQL refuses to run as root. Every server is a
child of this process: `LocalPair.destroy()` (also run at exit, and by the kernel if the
starting thread dies) leaves no postgres process behind.

The pair itself is in pair.py, one server in node.py, the logins and their grants in
logins.py, what the pair keeps in its folder in files.py, and what it needs from the
machine (binaries, the OS user, ports, processes) in system.py.
"""

from app.devdb.logins import DEMO_SQL, LOGINS_SQL, OWNER, SERVICE, SUPERUSER
from app.devdb.node import LocalNode, StopMode
from app.devdb.pair import LocalPair
from app.devdb.system import (
    RUN_AS_WHEN_ROOT,
    RunAs,
    SpawnOptions,
    _die_with_parent,
    alive,
    find_pg_bindir,
    free_ports,
    port_is_free,
    wait_until,
    wait_until_answering,
)

__all__ = [
    "DEMO_SQL",
    "LOGINS_SQL",
    "OWNER",
    "RUN_AS_WHEN_ROOT",
    "SERVICE",
    "SUPERUSER",
    "LocalNode",
    "LocalPair",
    "RunAs",
    "SpawnOptions",
    "StopMode",
    "_die_with_parent",
    "alive",
    "find_pg_bindir",
    "free_ports",
    "port_is_free",
    "wait_until",
    "wait_until_answering",
]
