"""A failover under the real driver: kill -9 of the primary while it reads."""

from __future__ import annotations

import time

from tests.cluster.test_failover import prepare
from tests.conftest import PairFactory, stop_server
from tests.neon.conftest import Driver, printed, start_neon_server

READ_SECONDS = 4.0


def test_reads_keep_succeeding_when_the_primary_is_killed(
    node_modules: str, make_pair: PairFactory
) -> None:
    own = make_pair()
    prepare(own)  # table t, replicated to the mirror
    server = start_neon_server(own)
    try:
        reads = Driver(node_modules, server.url).start("reads", "t", str(READ_SECONDS))
        assert reads.stderr is not None
        assert reads.stderr.readline().strip() == "reading"  # its first read is done
        killed_ms = time.time() * 1000
        own.primary.kill()
        stdout, stderr = reads.communicate(timeout=READ_SECONDS + 30)
        assert reads.returncode == 0, stderr
    finally:
        stop_server(server)
    outcomes = printed(stdout)["ok"]
    assert [o for o in outcomes if "error" in o] == []
    after = [o for o in outcomes if o["at"] > killed_ms + 1000]
    assert len(after) > 10  # served by the mirror, well after the primary was gone
    assert all(o["ok"] == 0 for o in outcomes)
