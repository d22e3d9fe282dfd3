"""Syncs that wait for one send: libpq's PQsendPipelineSync, which psycopg does not wrap yet.

`PQpipelineSync` flushes the connection's output buffer each time: one `send` system call per
unit, and on a loopback socket each of those does the TCP work of delivering to the server
and waking it, in our process. A batch of sixteen statements paid sixteen of them.
`PQsendPipelineSync` (libpq 17 and later) queues the Sync without flushing, so every unit but
the last is queued that way and the last unit's `PQpipelineSync` sends the whole batch in
one write (libpq still flushes on its own when its buffer grows past its threshold).

The function is looked up in the libpq that psycopg has loaded (the one mapped into this
process, found in /proc/self/maps), so it acts on psycopg's own PGconn. Mirrorpool needs it
(require_one_write, at start-up): behind PgBouncer a transaction's end and the cleanup after
it must reach the pooler in one write, or the pooler could hand the server session on
between them; and the reading takes rows in chunks (PQsetChunkedRowsMode, libpq 17 too).
psycopg[binary] bundles such a libpq.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn

from app.errors import SettingsError

logger = logging.getLogger(__name__)


def _loaded_libpq() -> str | None:
    """The path of the libpq mapped into this process, if one is."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.rsplit(" ", 1)[-1]
        if Path(path).name.startswith("libpq") and ".so" in path:
            return path
    return None


@cache
def _send_sync() -> Callable[[int], int] | None:
    """PQsendPipelineSync of psycopg's libpq, or None when it has none."""
    if pq.version() < 170000:
        return None
    # Without /proc (macOS, a BSD), the images already loaded are searched for it.
    path = _loaded_libpq()
    try:
        function = ctypes.CDLL(path).PQsendPipelineSync  # the same handle: dlopen counts
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p]
    function.restype = ctypes.c_int
    sender: Callable[[int], int] = function
    return sender


def require_one_write() -> None:
    """Raise SettingsError, with the one line to print, when psycopg's libpq has no
    PQsendPipelineSync."""
    if _send_sync() is None:
        version = pq.version()
        raise SettingsError(
            "mirrorpool needs libpq 17 or later (PQsendPipelineSync, chunked rows); this"
            f" psycopg ({pq.__impl__}) uses libpq {version // 10000}.{version % 10000}:"
            " install psycopg[binary], which bundles one"
        )


def queue_sync(pgconn: PGconn) -> None:
    """Close a unit with a Sync that is sent with the next flush. Raises
    psycopg.OperationalError as pipeline_sync does."""
    send = _send_sync()
    pointer: int | None = getattr(pgconn, "pgconn_ptr", None)  # both of psycopg's pq have it
    if send is None or pointer is None:  # (require_one_write says so at start-up)
        raise psycopg.NotSupportedError("this libpq has no PQsendPipelineSync")
    if send(pointer) != 1:
        message = pgconn.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(f"sending pipeline sync failed: {message}")
