"""Several worker processes (MIRRORPOOL_WORKERS > 1) seen as one service.

Each uvicorn worker has pools, lanes and counters of its own, and any of them may answer a
scrape. `mirrorpool serve` gives them one folder (PROMETHEUS_MULTIPROC_DIR, made before they
start and removed once they have stopped). In it:

- prometheus-client's multiprocess files: each worker's request counters and histograms,
  which /metrics adds up over every worker that ran, so counters never go backwards;
- one snapshot per worker, `worker-<pid>.json`, rewritten every second: its pools' figures
  and its event counts. /metrics adds pool gauges up over the workers alive and counters over
  all of them; /pool/stats lists each worker's pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from app.cluster.cluster import Cluster

logger = logging.getLogger(__name__)

SHARED_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
SNAPSHOT_INTERVAL_S = 1.0
_PREFIX = "worker-"


def shared_dir() -> Path | None:
    """The workers' shared folder, or None for a single process."""
    value = os.environ.get(SHARED_DIR_VARIABLE)
    return Path(value) if value else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One worker's figures as it last wrote them."""

    pid: int
    live: bool
    updated: float
    # node -> psycopg_pool get_stats() of the service's own pool
    pools: dict[str, dict[str, int]]
    # node -> role -> the same figures of a key role's pool
    logins: dict[str, dict[str, dict[str, int]]]
    events: dict[str, int]


def snapshot(cluster: Cluster, *, live: bool = True) -> Snapshot:
    """This worker's figures now."""
    return Snapshot(
        pid=os.getpid(),
        live=live,
        updated=time.time(),
        pools={n.name: n.pool_stats() for n in cluster.nodes},
        logins={n.name: {r: n.pool_stats(r) for r in n.logins} for n in cluster.nodes},
        events={kind.value: count for kind, count in cluster.events.counts.items()},
    )


def write(directory: Path, shot: Snapshot) -> None:
    """Replace this worker's snapshot file in one step (readers never see half of it)."""
    path = directory / f"{_PREFIX}{shot.pid}.json"
    partial = path.with_suffix(".tmp")
    partial.write_bytes(
        orjson.dumps(
            {
                "pid": shot.pid,
                "live": shot.live,
                "updated": shot.updated,
                "pools": shot.pools,
                "logins": shot.logins,
                "events": shot.events,
            }
        )
    )
    partial.replace(path)


def read_all(directory: Path, own: Snapshot) -> list[Snapshot]:
    """Every worker's snapshot, this worker's own as of now; a worker whose process is gone
    is not live (its counters still count)."""
    shots = [own]
    for path in sorted(directory.glob(f"{_PREFIX}*.json")):
        try:
            data: dict[str, Any] = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue  # removed or replaced while listed
        if data.get("pid") == own.pid:
            continue
        pid = int(data["pid"])
        shots.append(
            Snapshot(
                pid=pid,
                live=bool(data["live"]) and _alive(pid),
                updated=float(data["updated"]),
                pools=data["pools"],
                logins=data["logins"],
                events=data["events"],
            )
        )
    return shots


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live(shots: list[Snapshot]) -> Iterator[Snapshot]:
    """The snapshots of workers still running."""
    return (s for s in shots if s.live)


async def publish(cluster: Cluster, directory: Path) -> None:
    """Write this worker's snapshot every second until cancelled, then once more as stopped."""
    try:
        while True:
            try:
                write(directory, snapshot(cluster))
            except OSError as exc:
                logger.warning("could not write this worker's figures to %s: %s", directory, exc)
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
    finally:
        with contextlib.suppress(OSError):
            write(directory, snapshot(cluster, live=False))


@contextlib.asynccontextmanager
async def publishing(cluster: Cluster) -> AsyncIterator[None]:
    """Write this worker's snapshots while the app runs, when there are several workers (a
    task of the cluster's supervisor); the last one says the worker has stopped."""
    directory = shared_dir()
    if directory is None:
        yield
        return
    task = cluster.supervisor.spawn(publish(cluster, directory), name="publish-figures")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
