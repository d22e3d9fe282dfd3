"""Who is the writer, decided from what the monitor saw (app/cluster/failover.py)."""

from __future__ import annotations

import pytest

from app.cluster.failover import elect, newest_timeline
from app.cluster.node import Node
from app.settings import load_settings


def node(name: str, *, reachable: bool, in_recovery: bool, timeline: int) -> Node:
    settings = load_settings(primary_dsn="host=127.0.0.1 port=1 dbname=x", auth="disabled")
    n = Node(name, "host=127.0.0.1 port=1 dbname=x", settings)
    n.state.reachable = reachable
    n.state.in_recovery = in_recovery
    n.state.timeline = timeline
    return n


def test_the_one_writable_node_is_the_writer() -> None:
    a = node("primary", reachable=True, in_recovery=False, timeline=1)
    b = node("mirror", reachable=True, in_recovery=True, timeline=1)
    assert elect([a, b], set(), newest_timeline([a, b], 0)).writer is a


def test_newer_timeline_wins_and_the_other_is_fenced() -> None:
    old = node("primary", reachable=True, in_recovery=False, timeline=1)
    new = node("mirror", reachable=True, in_recovery=False, timeline=2)
    result = elect([old, new], set(), newest_timeline([old, new], 0))
    assert result.writer is new
    assert result.fence == [old]


def test_a_tie_is_undecidable_and_nobody_writes() -> None:
    a = node("primary", reachable=True, in_recovery=False, timeline=3)
    b = node("mirror", reachable=True, in_recovery=False, timeline=3)
    result = elect([a, b], set(), 3)
    assert result.writer is None
    assert result.tied == [a, b]


def test_a_lone_primary_on_an_old_timeline_is_fenced() -> None:
    # The promoted mirror is down right now, but timeline 2 was seen: the old primary on
    # timeline 1 must not take writes back.
    old = node("primary", reachable=True, in_recovery=False, timeline=1)
    gone = node("mirror", reachable=False, in_recovery=False, timeline=2)
    result = elect([old, gone], set(), newest_timeline([old, gone], 2))
    assert result.writer is None
    assert result.fence == [old]


@pytest.mark.parametrize("fenced", [{"primary"}, {"primary", "mirror"}])
def test_fenced_nodes_are_never_elected(fenced: set[str]) -> None:
    a = node("primary", reachable=True, in_recovery=False, timeline=5)
    b = node("mirror", reachable=True, in_recovery=True, timeline=5)
    assert elect([a, b], fenced, 5).writer is None
