"""Which node serves a request (app/cluster/routing.py), from what the monitor saw, without a
database: nodes are built but their pools never opened."""

from __future__ import annotations

import pytest

from app.cluster.node import Node
from app.cluster.routing import Routing
from app.errors import NoReaderError, NoWriterError
from app.settings import load_settings

DSN = "host=127.0.0.1 port=1 dbname=x"


def node(name: str, *, in_recovery: bool, lag_s: float | None = None, failures: int = 0) -> Node:
    n = Node(name, DSN, load_settings(primary_dsn=DSN, auth="disabled"))
    n.state.reachable = True
    n.state.in_recovery = in_recovery
    n.state.replay_lag_s = lag_s
    n.state.consecutive_failures = failures
    return n


def routing(nodes: list[Node], read_from_mirror: bool = False) -> Routing:
    return Routing(nodes, read_from_mirror=read_from_mirror, max_replica_lag_ms=100)


def test_writes_go_to_the_writer_and_fail_fast_without_one() -> None:
    primary, mirror = node("primary", in_recovery=False), node("mirror", in_recovery=True)
    route = routing([primary, mirror])
    assert route.pick("write", primary, {}, {}) is primary
    with pytest.raises(NoWriterError):
        route.pick("write", None, {}, {})
    # The writer just failed this request: no other node may take the write.
    with pytest.raises(NoWriterError):
        route.pick("write", primary, {}, {}, avoid={"primary"})


def test_reads_go_to_the_writer_then_to_a_mirror() -> None:
    primary, mirror = node("primary", in_recovery=False), node("mirror", in_recovery=True)
    route = routing([primary, mirror])
    assert route.pick("read", primary, {}, {}) is primary
    assert route.pick("read", None, {}, {}) is mirror
    assert route.pick("read", primary, {}, {}, avoid={"primary"}) is mirror


@pytest.mark.parametrize(
    ("fenced", "aliases"), [({"mirror": "old timeline"}, {}), ({}, {"mirror": "primary"})]
)
def test_a_fenced_node_or_an_alias_serves_no_reads(
    fenced: dict[str, str], aliases: dict[str, str]
) -> None:
    mirror = node("mirror", in_recovery=True, lag_s=0.0)
    route = routing([node("primary", in_recovery=False), mirror], read_from_mirror=True)
    assert route.readers(None, fenced, aliases) == []
    with pytest.raises(NoReaderError):
        route.pick("read", None, fenced, aliases)


@pytest.mark.parametrize(
    ("lag_s", "served_by"), [(0.05, "mirror"), (5.0, "primary"), (None, "primary")]
)
def test_with_read_from_mirror_reads_go_to_a_fresh_mirror_only(
    lag_s: float | None, served_by: str
) -> None:
    primary, mirror = (
        node("primary", in_recovery=False),
        node("mirror", in_recovery=True, lag_s=lag_s),
    )
    route = routing([primary, mirror], read_from_mirror=True)
    assert route.pick("read", primary, {}, {}).name == served_by


def test_a_node_whose_last_probe_failed_reads_last() -> None:
    shaky = node("mirror1", in_recovery=True, failures=1)
    steady = node("mirror2", in_recovery=True)
    route = routing([node("primary", in_recovery=False), shaky, steady])
    assert [n.name for n in route.readers(None, {}, {})] == ["mirror2", "mirror1"]
    assert route.pick("read", None, {}, {}) is steady
