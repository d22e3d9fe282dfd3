"""Who is the writer, decided from what the monitor saw (app/cluster/failover.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.cluster.failover import elect, find_aliases, newest_timeline
from app.cluster.node import Node, ServerIdentity
from app.settings import load_settings

STARTED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


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


def on_server(
    n: Node, started: datetime = STARTED, address: str | None = None, port: int | None = None
) -> Node:
    n.state.server = ServerIdentity(7, started, address, port)
    return n


def test_two_nodes_on_one_server_are_one_writer() -> None:
    a = on_server(node("primary", reachable=True, in_recovery=False, timeline=2))
    b = on_server(node("mirror", reachable=True, in_recovery=False, timeline=2))
    aliases = find_aliases([a, b])
    assert aliases == {"mirror": a}
    result = elect([a, b], set(), 2, aliases)
    assert (result.writer, result.fence, result.tied) == (a, [], [])


def test_the_node_that_saw_the_server_writable_stands_for_it() -> None:
    # Probed a moment apart around a promotion, the two nodes disagree on its role.
    a = on_server(node("primary", reachable=True, in_recovery=True, timeline=1))
    b = on_server(node("mirror", reachable=True, in_recovery=False, timeline=2))
    aliases = find_aliases([a, b])
    assert aliases == {"primary": b}
    assert elect([a, b], set(), 2, aliases).writer is b


def test_a_restarted_server_or_a_sibling_replica_is_another_server() -> None:
    a = on_server(node("primary", reachable=True, in_recovery=False, timeline=2))
    b = on_server(
        node("mirror", reachable=True, in_recovery=False, timeline=2),
        started=STARTED.replace(microsecond=0),
    )
    assert find_aliases([a, b]) == {}
    assert elect([a, b], set(), 2).tied == [a, b]


def test_the_address_a_server_saw_is_not_part_of_its_identity() -> None:
    # A Unix socket shows no address; a server may listen on several.
    a = on_server(node("primary", reachable=True, in_recovery=True, timeline=1))
    b = on_server(
        node("mirror", reachable=True, in_recovery=True, timeline=1),
        address="10.0.0.5",
        port=5432,
    )
    assert find_aliases([a, b]) == {"mirror": a}


def test_an_unreachable_node_is_nobodys_alias() -> None:
    a = on_server(node("primary", reachable=True, in_recovery=False, timeline=2))
    b = on_server(node("mirror", reachable=False, in_recovery=False, timeline=2))
    assert find_aliases([a, b]) == {}
