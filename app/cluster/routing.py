"""Routing: which node serves a request, given the writer that failover decided
(app/cluster/failover.py) and what the monitor saw of the others."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

from app.cluster.node import Node, Role
from app.errors import NoReaderError, NoWriterError

Intent = Literal["read", "write"]


class Routing:
    """Picks the node for each request: writes to the writer, reads to the writer or, when
    allowed, to the least loaded mirror whose replay lag is under the threshold."""

    def __init__(
        self, nodes: Sequence[Node], *, read_from_mirror: bool, max_replica_lag_ms: int
    ) -> None:
        self.nodes = nodes
        self.read_from_mirror = read_from_mirror
        self.max_replica_lag_ms = max_replica_lag_ms

    def pick(
        self,
        intent: Intent,
        writer: Node | None,
        out: Collection[str],
        aliases: Collection[str],
        avoid: Collection[str] = (),
    ) -> Node:
        """The node that serves a request of this intent, or a ClusterError saying why none.

        Reads go to the writer when there is one, else to the first reachable mirror;
        `out` (fenced) and `aliases` name nodes that serve nothing, `avoid` nodes that just
        failed this request.
        """
        if intent == "write":
            if writer is None or writer.name in avoid:
                raise NoWriterError("no writable node is reachable; retry shortly")
            return writer
        readers = [n for n in self.readers(writer, out, aliases) if n.name not in avoid]
        if not readers:
            raise NoReaderError("no node is reachable for reads; retry shortly")
        if self.read_from_mirror:
            fresh = [n for n in readers if n is not writer and self.fresh(n)]
            if fresh:
                # Spread reads over the fresh mirrors, the least loaded pool first.
                return min(fresh, key=lambda n: n.requests_waiting())
        return readers[0]

    def fresh(self, node: Node) -> bool:
        """Whether the node's replay lag is known and under MIRRORPOOL_MAX_REPLICA_LAG_MS."""
        lag = node.state.replay_lag_s
        return lag is not None and lag * 1000 <= self.max_replica_lag_ms

    def readers(
        self, writer: Node | None, out: Collection[str], aliases: Collection[str]
    ) -> list[Node]:
        """Reachable nodes that can serve reads: the writer first, then mirrors not `out`
        (fenced); a node whose last probe failed goes last until it is confirmed up or down.
        An alias is not one: its server already serves through the node it is an alias of."""
        mirrors = [
            n
            for n in self.nodes
            if n.role is Role.MIRROR and n.name not in out and n.name not in aliases
        ]
        nodes = ([writer] if writer else []) + mirrors
        return sorted(nodes, key=lambda n: n.state.consecutive_failures > 0)
