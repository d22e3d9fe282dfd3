"""Where failover is decided: which node is the writer, and which must be fenced.

The writer is the one reachable node that is not in recovery. When more than one node
accepts writes (an old primary came back after its mirror was promoted), the one on the
newest timeline wins and the others are fenced: no reads, no writes, until an operator
clears them or they rejoin as mirrors. A node that accepts writes on a timeline older than
one already seen is fenced even when it is alone. If two writable nodes share the newest
timeline nobody can tell which is right, so nobody gets writes.

Two configured nodes may lead to one server: CloudNativePG's -rw and -ro Services both
reach the promoted replica after a failover, through connections -ro made before it. They
are one server, not two writers: the first of them in configuration order stands for it
(the first writable one, when their probes disagree on its role), and the others are its
aliases, left out of the election and of routing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from app.cluster.node import Node, Role, ServerIdentity


@dataclass(frozen=True)
class Election:
    """The outcome of one election."""

    writer: Node | None
    fence: list[Node] = field(default_factory=list)
    tied: list[Node] = field(default_factory=list)


def newest_timeline(nodes: list[Node], seen: int) -> int:
    """The newest timeline any reachable node reports, or `seen` if that is newer."""
    timelines = [n.state.timeline for n in nodes if n.state.reachable and n.state.timeline]
    return max([seen, *timelines])


def find_aliases(nodes: list[Node]) -> dict[str, Node]:
    """Reachable nodes that lead to the same server as another, each mapped to the node
    that stands for that server."""
    servers: dict[ServerIdentity, list[Node]] = {}
    for node in nodes:
        if node.state.reachable and node.state.server is not None:
            servers.setdefault(node.state.server, []).append(node)
    aliases: dict[str, Node] = {}
    for same in servers.values():
        lead = next((n for n in same if n.role is Role.PRIMARY), same[0])
        aliases.update((n.name, lead) for n in same if n is not lead)
    return aliases


def elect(
    nodes: list[Node], fenced: set[str], newest: int, aliases: Collection[str] = ()
) -> Election:
    """Choose the writer among unfenced writable nodes, aliases left out; name the ones to
    fence."""
    writable = [
        n
        for n in nodes
        if n.role is Role.PRIMARY and n.name not in fenced and n.name not in aliases
    ]
    stale = [n for n in writable if (n.state.timeline or 0) < newest]
    current = [n for n in writable if n not in stale]
    if not current:
        return Election(None, stale)
    top = max(n.state.timeline or 0 for n in current)
    best = [n for n in current if (n.state.timeline or 0) == top]
    older = [n for n in current if n not in best]
    if len(best) > 1:
        return Election(None, stale + older, best)
    return Election(best[0], stale + older)
