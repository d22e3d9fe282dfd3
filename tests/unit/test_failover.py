"""Failover's rules (app/cluster/failover.py), from plain facts, without a database: when a
node counts as down, who takes writes, who is fenced, which mirror is promoted, and when a
failed write means its node was demoted."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from app.cluster.failover import (
    NodeFacts,
    Standing,
    counts_down,
    decide,
    demoted_writer,
    elect,
    find_aliases,
    may_be_demoted,
    newest_timeline,
    promotion,
    refuse_promotion,
)
from app.cluster.node import ServerIdentity

STARTED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def writable(name: str, timeline: int, server: int | None = None) -> NodeFacts:
    """A reachable node not in recovery; `server` names the server it reached (None: unknown)."""
    return NodeFacts(name, True, False, timeline, _server(server))


def mirror(name: str, timeline: int, lag_bytes: int = 0, server: int | None = None) -> NodeFacts:
    """A reachable node in recovery."""
    return NodeFacts(name, True, True, timeline, _server(server), 0.0, lag_bytes)


def down(name: str, timeline: int = 1) -> NodeFacts:
    """A node the monitor counts as down (its last timeline kept)."""
    return NodeFacts(name, False, False, timeline)


def _server(number: int | None) -> ServerIdentity | None:
    # Same system identifier (a primary and its replicas share it); the start time tells
    # servers apart.
    if number is None:
        return None
    return ServerIdentity(7, STARTED.replace(microsecond=number))


@pytest.mark.parametrize(
    ("failures", "threshold", "is_down"),
    [(0, 1, False), (1, 1, True), (1, 2, False), (2, 2, True), (3, 2, True), (2, 3, False)],
)
def test_a_node_counts_as_down_after_threshold_failed_probes(
    failures: int, threshold: int, is_down: bool
) -> None:
    assert counts_down(failures, threshold) is is_down


@pytest.mark.parametrize(
    ("sqlstate", "in_recovery", "demoted"),
    [
        ("25006", True, True),  # a write refused by a standby: the writer was demoted
        ("25006", False, False),  # a READ ONLY transaction refused a write on the primary
        ("25006", None, False),  # nobody could tell: not a demotion
        ("40001", True, False),  # a serialization failure says nothing of the role
        ("08006", True, False),  # a lost connection is a node failure, not a demotion
        (None, True, False),
    ],
)
def test_a_write_refused_by_a_standby_means_the_writer_was_demoted(
    sqlstate: str | None, in_recovery: bool | None, demoted: bool
) -> None:
    assert demoted_writer(sqlstate, in_recovery) is demoted


@pytest.mark.parametrize(("sqlstate", "ask"), [("25006", True), ("23505", False), (None, False)])
def test_only_a_read_only_refusal_is_worth_asking_the_role(sqlstate: str | None, ask: bool) -> None:
    assert may_be_demoted(sqlstate) is ask


# (case, nodes, fenced before, newest timeline seen before) ->
# (writer, newly fenced, tied, unfenced, aliases)
ELECTIONS = [
    (
        "one primary and its mirror",
        [writable("primary", 1), mirror("mirror", 1)],
        set(),
        0,
        ("primary", [], [], [], {}),
    ),
    (
        "writer lost: nobody takes writes, the mirror still reads",
        [down("primary"), mirror("mirror", 1)],
        set(),
        1,
        (None, [], [], [], {}),
    ),
    (
        "the mirror was promoted and the old primary came back: the newer timeline wins",
        [writable("primary", 1), writable("mirror", 2)],
        set(),
        1,
        ("mirror", ["primary"], [], [], {}),
    ),
    (
        "both claim writer on the same timeline on different servers: nobody writes",
        [writable("primary", 3, server=1), writable("mirror", 3, server=2)],
        set(),
        3,
        (None, [], ["primary", "mirror"], [], {}),
    ),
    (
        "a lone primary on a timeline older than one seen is fenced",
        [writable("primary", 1), down("mirror", 2)],
        set(),
        2,
        (None, ["primary"], [], [], {}),
    ),
    (
        "a fenced old writer that still accepts writes stays fenced",
        [writable("primary", 1), writable("mirror", 2)],
        {"primary"},
        2,
        ("mirror", [], [], [], {}),
    ),
    (
        "a fenced old writer that rejoined as a mirror of the newest timeline is unfenced",
        [mirror("primary", 2), writable("mirror", 2)],
        {"primary"},
        2,
        ("mirror", [], [], ["primary"], {}),
    ),
    (
        "a fenced node still replaying the old timeline stays fenced",
        [mirror("primary", 1), writable("mirror", 2)],
        {"primary"},
        2,
        ("mirror", [], [], [], {}),
    ),
    (
        "a fenced node is never elected, even as the only writable one",
        [writable("primary", 5), mirror("mirror", 5)],
        {"primary"},
        5,
        (None, [], [], [], {}),
    ),
    (
        "two nodes leading to one server are one writer, the first standing for it",
        [writable("primary", 2, server=1), writable("mirror", 2, server=1)],
        set(),
        2,
        ("primary", [], [], [], {"mirror": "primary"}),
    ),
    (
        "probed apart around a promotion, the node that saw the server writable stands for it",
        [mirror("primary", 1, server=1), writable("mirror", 2, server=1)],
        set(),
        1,
        ("mirror", [], [], [], {"primary": "mirror"}),
    ),
    (
        "an unreachable node is nobody's alias",
        [writable("primary", 2, server=1), replace(down("mirror", 2), server=_server(1))],
        set(),
        2,
        ("primary", [], [], [], {}),
    ),
    (
        "three nodes: primary lost, mirror1 promoted, mirror2 follows it",
        [down("primary", 1), writable("mirror1", 2), mirror("mirror2", 2)],
        set(),
        1,
        ("mirror1", [], [], [], {}),
    ),
    (
        "two promoted mirrors: the newer timeline wins, the older and the old primary fenced",
        [writable("primary", 1), writable("mirror1", 2), writable("mirror2", 3)],
        set(),
        1,
        ("mirror2", ["primary", "mirror1"], [], [], {}),
    ),
]


@pytest.mark.parametrize(
    ("nodes", "fenced", "seen", "expected"),
    [case[1:] for case in ELECTIONS],
    ids=[case[0] for case in ELECTIONS],
)
def test_who_takes_writes_and_who_is_fenced(
    nodes: list[NodeFacts],
    fenced: set[str],
    seen: int,
    expected: tuple[str | None, list[str], list[str], list[str], dict[str, str]],
) -> None:
    decision = decide(nodes, Standing(fenced=frozenset(fenced), newest_timeline=seen), None)
    writer, fence, tied, unfence, aliases = expected
    assert decision.writer == writer
    assert list(decision.fence) == fence
    assert decision.tied == tied
    assert decision.unfence == unfence
    assert decision.aliases == aliases
    # While nobody takes writes the candidates are probed quickly.
    assert decision.hunt is (writer is None)


def test_a_fence_says_which_timelines_and_what_it_means() -> None:
    decision = decide([writable("primary", 1), writable("mirror", 2)], Standing(), None)
    assert decision.fence == {
        "primary": "accepts writes on timeline 1, older than 2: "
        "no traffic until an operator clears it"
    }


def test_the_newest_timeline_is_remembered_while_its_node_is_down() -> None:
    # Seen 2 before; the promoted node is down now, the old primary reports 1.
    assert newest_timeline([writable("primary", 1), down("mirror", 2)], 2) == 2
    # An unreachable node's timeline is not news.
    assert newest_timeline([writable("primary", 1), down("mirror", 4)], 0) == 1
    decision = decide([writable("primary", 1)], Standing(newest_timeline=2), None)
    assert (decision.writer, decision.newest_timeline) == (None, 2)
    assert list(decision.fence) == ["primary"]


def test_a_tie_is_reported_once_and_its_nodes_probed_on_new_connections() -> None:
    tie = [writable("primary", 3, server=1), writable("mirror", 3, server=2)]
    first = decide(tie, Standing(newest_timeline=3), None)
    assert first.report_tie is True
    assert first.probe_fresh == {"primary", "mirror"}
    again = decide(tie, Standing(newest_timeline=3, tie_reported=True), None)
    assert again.report_tie is False
    assert again.writer is None


def test_aliases_are_probed_on_new_connections() -> None:
    one = [writable("primary", 2, server=1), writable("mirror", 2, server=1)]
    assert decide(one, Standing(), None).probe_fresh == {"mirror"}
    two = [writable("primary", 2, server=1), mirror("mirror", 2, server=2)]
    assert decide(two, Standing(), None).probe_fresh == frozenset()


def test_a_restarted_server_or_a_sibling_replica_is_another_server() -> None:
    a = writable("primary", 2, server=1)
    b = writable("mirror", 2, server=2)
    assert find_aliases([a, b]) == {}
    assert elect([a, b], set(), 2).tied == ["primary", "mirror"]


def test_the_address_a_server_saw_is_not_part_of_its_identity() -> None:
    # A Unix socket shows no address; a server may listen on several.
    a = mirror("primary", 1, server=1)
    b = replace(
        mirror("mirror", 1),
        server=ServerIdentity(7, STARTED.replace(microsecond=1), "10.0.0.5", 5432),
    )
    assert find_aliases([a, b]) == {"mirror": "primary"}


# (case, nodes, promote-after timer running, MIRRORPOOL_PROMOTE_AFTER_S) ->
# (timer started for, timer stopped)
LOST = [down("primary"), mirror("mirror", 1)]
UP = [writable("primary", 1), mirror("mirror", 1)]
TIE = [writable("primary", 3, server=1), writable("mirror", 3, server=2)]
TIMERS = [
    ("writer lost: the timer starts", LOST, False, 5.0, (5.0, False)),
    ("writer lost, timer running: left alone", LOST, True, 5.0, (None, False)),
    ("Patroni-managed (promote off): never a timer", LOST, False, None, (None, False)),
    ("a writer is back: the timer stops", UP, True, 5.0, (None, True)),
    ("a writer and no timer: nothing to do", UP, False, 5.0, (None, False)),
    ("a tie is no writer: the timer starts", TIE, False, 5.0, (5.0, False)),
]


@pytest.mark.parametrize(
    ("nodes", "running", "after", "expected"),
    [case[1:] for case in TIMERS],
    ids=[case[0] for case in TIMERS],
)
def test_the_promote_after_timer(
    nodes: list[NodeFacts],
    running: bool,
    after: float | None,
    expected: tuple[float | None, bool],
) -> None:
    decision = decide(nodes, Standing(newest_timeline=1, promotion_timer=running), after)
    assert (decision.promote_in_s, decision.stop_promotion) == expected


# (case, nodes, fenced, aliases) -> the mirror promoted once the time is up
PROMOTIONS = [
    ("the one mirror", [down("primary"), mirror("mirror", 1)], set(), set(), "mirror"),
    (
        "the least lagged mirror",
        [down("primary"), mirror("mirror1", 1, lag_bytes=900), mirror("mirror2", 1, lag_bytes=10)],
        set(),
        set(),
        "mirror2",
    ),
    (
        "never a fenced mirror",
        [down("primary"), mirror("mirror1", 1, lag_bytes=900), mirror("mirror2", 1)],
        {"mirror2"},
        set(),
        "mirror1",
    ),
    (
        "never an alias",
        [down("primary"), mirror("mirror1", 1, lag_bytes=900), mirror("mirror2", 1)],
        set(),
        {"mirror2"},
        "mirror1",
    ),
    (
        "none while a fenced node accepts writes: that is no lost primary",
        [writable("primary", 1), mirror("mirror", 2)],
        {"primary"},
        set(),
        None,
    ),
    (
        "none while two nodes tie",
        [writable("primary", 3, server=1), writable("mirror1", 3, server=2), mirror("mirror2", 3)],
        set(),
        set(),
        None,
    ),
    ("none when no mirror is reachable", [down("primary"), down("mirror")], set(), set(), None),
]


@pytest.mark.parametrize(
    ("nodes", "fenced", "aliases", "promoted"),
    [case[1:] for case in PROMOTIONS],
    ids=[case[0] for case in PROMOTIONS],
)
def test_which_mirror_is_promoted(
    nodes: list[NodeFacts], fenced: set[str], aliases: set[str], promoted: str | None
) -> None:
    choice = promotion(nodes, fenced, aliases, waited_s=5.0, promote_after_s=5.0)
    assert (choice.node, choice.wait_s) == (promoted, None)


def test_a_timer_that_fires_early_looks_again_instead_of_promoting() -> None:
    choice = promotion([down("primary"), mirror("mirror", 1)], set(), set(), 4.9, 5.0)
    assert choice.node is None
    assert choice.wait_s == pytest.approx(0.11)


@pytest.mark.parametrize(
    ("node", "fenced", "refused"),
    [
        (mirror("mirror", 1), {}, None),
        (writable("mirror", 1), {}, "mirror is not a reachable mirror (it is primary)"),
        (down("mirror"), {}, "mirror is not a reachable mirror (it is unknown)"),
        (mirror("mirror", 1), {"mirror": "rejoin me"}, "mirror is fenced: rejoin me"),
    ],
)
def test_a_promotion_asked_for_is_refused_on_anything_but_an_unfenced_mirror(
    node: NodeFacts, fenced: dict[str, str], refused: str | None
) -> None:
    assert refuse_promotion(node, fenced) == refused
