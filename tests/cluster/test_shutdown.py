"""The service stops all it started: once the lifespan has ended, none of its tasks or timers
runs (app/supervisor.py), even with a failover under way."""

from __future__ import annotations

import asyncio

from app.devdb import SERVICE, LocalPair, free_ports
from app.main import create_app
from tests.conftest import PairFactory, settings_for
from tests.waiting import eventually


async def test_shutdown_leaves_no_task_or_timer_running(make_pair: PairFactory) -> None:
    # A pair of its own: the promote-after timer must never fire on the shared one.
    own = make_pair()
    nobody = f"host=127.0.0.1 port={free_ports(1)[0]} dbname=postgres user={SERVICE}"
    settings = settings_for(own, primary_dsn=nobody, promote_after_s=60)
    before = asyncio.all_tasks()
    app = create_app(settings)
    supervisor = app.state.supervisor
    async with app.router.lifespan_context(app):
        cluster = app.state.cluster
        primary, mirror = cluster.node("primary"), cluster.node("mirror")
        await eventually(
            lambda: primary.state.reachable is False and mirror.state.reachable is True,
            "the primary down and the mirror up",
        )
        # No writer: the monitor hunts for one, and the promotion waits its 60 s.
        assert cluster.writer is None and cluster.monitor.hunting
        names = supervisor.names()
        assert {"monitor-primary", "monitor-mirror"} <= set(names)
        assert supervisor.running == len(names) + 1  # the tasks, and the promote-after timer
    assert supervisor.running == 0
    assert supervisor.names() == []
    left = [
        task.get_name()
        for task in asyncio.all_tasks() - before
        if not task.done() and task is not asyncio.current_task()
    ]
    assert left == []
    with own.mirrors[0].connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


async def test_the_monitor_stops_when_woken_as_it_is_stopped(pair: LocalPair) -> None:
    """A probe asked for (a request saw its node fail) just as the service stops: Python
    3.11's asyncio.wait_for lost such a cancel, and the shutdown waited for the monitor's
    loop for ever."""
    app = create_app(settings_for(pair))
    async with app.router.lifespan_context(app):
        cluster = app.state.cluster
        monitor = cluster.monitor
        seen = {n.name: n.state.last_check for n in cluster.nodes}
        # (each loop is then in its pause until the next probe)
        await eventually(
            lambda: all(n.state.last_check != seen[n.name] for n in cluster.nodes),
            "a probe of every node",
        )
        for node in cluster.nodes:
            monitor.probe_soon(node)
        async with asyncio.timeout(5):
            await monitor.stop()
        assert all(
            task.done() for task in asyncio.all_tasks() if task.get_name().startswith("monitor-")
        )
