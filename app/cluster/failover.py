"""Where failover is decided: when a node counts as down, which node is the writer, which
nodes are fenced or aliases, which mirror to promote, and when a failed write means that its
node was demoted.

Every rule is a pure function over plain facts (NodeFacts, what the monitor last saw of a
node), tested without a database (tests/unit/test_failover.py). app/cluster/cluster.py
gathers the facts, applies the Decision these functions return (records the events, fences,
starts or stops the promotion timer) and routes by it (app/cluster/routing.py).

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

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from app.cluster.node import NodeState, Role, ServerIdentity, role_of

# SQLSTATE read_only_sql_transaction: what a write gets from a server in recovery.
READ_ONLY_SQL_TRANSACTION = "25006"
# A timer may fire a hair early on another clock: the promotion looks again this much later.
PROMOTE_RECHECK_S = 0.01


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the monitor last saw of one node, as plain values."""

    name: str
    reachable: bool | None = None
    in_recovery: bool | None = None
    timeline: int | None = None
    server: ServerIdentity | None = None
    replay_lag_s: float | None = None
    replay_lag_bytes: int | None = None

    @classmethod
    def seen(cls, name: str, state: NodeState) -> NodeFacts:
        """The facts in a node's state."""
        return cls(
            name,
            state.reachable,
            state.in_recovery,
            state.timeline,
            state.server,
            state.replay_lag_s,
            state.replay_lag_bytes,
        )

    @property
    def role(self) -> Role:
        """primary when reachable and not in recovery, mirror when in recovery."""
        return role_of(self.reachable, self.in_recovery)


def counts_down(failures: int, threshold: int) -> bool:
    """A node counts as down once `threshold` probes in a row have failed
    (MIRRORPOOL_HEALTH_THRESHOLD); before that it is failing, probed again quickly."""
    return failures >= threshold


def demoted_writer(sqlstate: str | None, in_recovery: bool | None) -> bool:
    """A write failed with 25006 (read_only_sql_transaction) on a node that is in recovery:
    the node written to is a standby now, no longer the writer. `in_recovery` is None when
    nobody could tell (ask only when may_be_demoted() says the answer matters)."""
    return may_be_demoted(sqlstate) and in_recovery is True


def may_be_demoted(sqlstate: str | None) -> bool:
    """Whether a write's failure could mean its node was demoted: only then is
    pg_is_in_recovery() worth a round trip."""
    return sqlstate == READ_ONLY_SQL_TRANSACTION


def newest_timeline(nodes: Sequence[NodeFacts], seen: int) -> int:
    """The newest timeline any reachable node reports, or `seen` if that is newer."""
    timelines = [n.timeline for n in nodes if n.reachable and n.timeline]
    return max([seen, *timelines])


def find_aliases(nodes: Sequence[NodeFacts]) -> dict[str, str]:
    """Reachable nodes that lead to the same server as another, each mapped to the name of
    the node that stands for that server."""
    servers: dict[ServerIdentity, list[NodeFacts]] = {}
    for node in nodes:
        if node.reachable and node.server is not None:
            servers.setdefault(node.server, []).append(node)
    aliases: dict[str, str] = {}
    for same in servers.values():
        lead = next((n for n in same if n.role is Role.PRIMARY), same[0])
        aliases.update((n.name, lead.name) for n in same if n is not lead)
    return aliases


def rejoined(nodes: Sequence[NodeFacts], fenced: Collection[str], newest: int) -> list[str]:
    """Fenced nodes that are safe again: they follow the newest timeline as mirrors."""
    return [
        n.name
        for n in nodes
        if n.name in fenced and n.role is Role.MIRROR and (n.timeline or 0) >= newest
    ]


@dataclass(frozen=True)
class Election:
    """The outcome of one election, by node name."""

    writer: str | None
    fence: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)


def elect(
    nodes: Sequence[NodeFacts], fenced: Collection[str], newest: int, aliases: Collection[str] = ()
) -> Election:
    """Choose the writer among unfenced writable nodes, aliases left out; name the ones to
    fence."""
    writable = [
        n
        for n in nodes
        if n.role is Role.PRIMARY and n.name not in fenced and n.name not in aliases
    ]
    stale = [n for n in writable if (n.timeline or 0) < newest]
    current = [n for n in writable if n not in stale]
    if not current:
        return Election(None, [n.name for n in stale])
    top = max(n.timeline or 0 for n in current)
    best = [n for n in current if (n.timeline or 0) == top]
    fence = [n.name for n in stale + [n for n in current if n not in best]]
    if len(best) > 1:
        return Election(None, fence, [n.name for n in best])
    return Election(best[0].name, fence)


@dataclass(frozen=True)
class Standing:
    """What the cluster carries from one decision to the next."""

    fenced: frozenset[str] = frozenset()
    newest_timeline: int = 0
    # A tie was seen (and reported) at the last decision.
    tie_reported: bool = False
    # No writer since the promote-after timer was started (it runs, or it fired and found
    # no mirror to promote: one timer per outage).
    promotion_timer: bool = False


@dataclass(frozen=True)
class Decision:
    """What the cluster does after a node's state changed, or a fence was cleared."""

    writer: str | None
    newest_timeline: int
    # Fenced nodes that rejoined as mirrors: traffic again.
    unfence: list[str] = field(default_factory=list)
    # Nodes to fence now (no traffic, their requests failed), with the reason.
    fence: dict[str, str] = field(default_factory=dict)
    # Every alias now, with the node that stands for its server.
    aliases: dict[str, str] = field(default_factory=dict)
    # Writable nodes on the newest timeline, more than one: nobody writes.
    tied: list[str] = field(default_factory=list)
    # The tie is news: report it once and probe the tied nodes now.
    report_tie: bool = False
    # Nodes to probe on a new connection every time (a kept one may reach an old server).
    probe_fresh: frozenset[str] = frozenset()
    # Probe the candidates for writer quickly: nobody accepts writes.
    hunt: bool = False
    # Start the promote-after timer for this many seconds (None: leave it as it is).
    promote_in_s: float | None = None
    # Stop the promote-after timer: a writer is back.
    stop_promotion: bool = False


def decide(
    nodes: Sequence[NodeFacts], standing: Standing, promote_after_s: float | None
) -> Decision:
    """The writer, the fences, the aliases and the promotion timer for what was last seen."""
    newest = newest_timeline(nodes, standing.newest_timeline)
    unfence = rejoined(nodes, standing.fenced, newest)
    fenced = standing.fenced - set(unfence)
    aliases = find_aliases(nodes)
    election = elect(nodes, fenced, newest, aliases)
    timelines = {n.name: n.timeline for n in nodes}
    fence = {
        name: (
            f"accepts writes on timeline {timelines[name]}, older than {newest}: "
            "no traffic until an operator clears it"
        )
        for name in election.fence
    }
    writer = election.writer
    # MIRRORPOOL_PROMOTE_AFTER_S unset (an HA manager such as Patroni promotes): no timer.
    start = writer is None and not standing.promotion_timer and promote_after_s is not None
    return Decision(
        writer=writer,
        newest_timeline=newest,
        unfence=unfence,
        fence=fence,
        aliases=aliases,
        tied=election.tied,
        report_tie=bool(election.tied) and not standing.tie_reported,
        # Tied nodes and aliases are probed on new connections, so that a tie or an alias
        # that only old connections made goes away.
        probe_fresh=frozenset(aliases) | frozenset(election.tied),
        hunt=writer is None,
        promote_in_s=promote_after_s if start else None,
        stop_promotion=writer is not None and standing.promotion_timer,
    )


@dataclass(frozen=True)
class Promotion:
    """What the promote-after timer does when it fires."""

    # The mirror to promote now, if any.
    node: str | None = None
    # Look again after this many seconds (the timer fired early).
    wait_s: float | None = None


def promotion(
    nodes: Sequence[NodeFacts],
    fenced: Collection[str],
    aliases: Collection[str],
    waited_s: float,
    promote_after_s: float,
) -> Promotion:
    """Once no writer was seen for `promote_after_s`: the reachable unfenced mirror (not an
    alias) with the least replay lag; none while any node accepts writes (fenced or tied:
    that is no lost primary, and promoting would make one more writer)."""
    if waited_s < promote_after_s:
        return Promotion(wait_s=promote_after_s - waited_s + PROMOTE_RECHECK_S)
    if any(n.role is Role.PRIMARY for n in nodes):
        return Promotion()
    mirrors = [
        n for n in nodes if n.role is Role.MIRROR and n.name not in fenced and n.name not in aliases
    ]
    if not mirrors:
        return Promotion()
    best = min(mirrors, key=lambda n: (n.replay_lag_bytes or 0, n.replay_lag_s or 0))
    return Promotion(node=best.name)


def refuse_promotion(node: NodeFacts, fenced: Mapping[str, str]) -> str | None:
    """Why a promotion asked for (POST /v1/admin/promote) must not happen, or None."""
    if node.role is not Role.MIRROR:
        return f"{node.name} is not a reachable mirror (it is {node.role})"
    if node.name in fenced:
        return f"{node.name} is fenced: {fenced[node.name]}"
    return None
