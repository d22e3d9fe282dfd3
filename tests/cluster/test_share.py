"""Each key's share of a pool, as a line of its own (app/cluster/share.py): decided without a
database, like the election."""

from __future__ import annotations

import asyncio

import pytest

from app.cluster.share import KeyShare, share_of
from app.errors import PoolExhausted
from tests.waiting import eventually


def test_a_share_is_rounded_down_and_never_none() -> None:
    assert [share_of(size, 0.5) for size in (1, 2, 3, 4, 10)] == [1, 1, 1, 2, 5]
    assert share_of(10, 1.0) == 10
    assert share_of(4, 0.01) == 1


async def test_a_key_at_its_share_waits_in_its_own_line_in_order() -> None:
    share = KeyShare("primary", 2)
    await share.acquire("a", 1)
    await share.acquire("a", 1)
    served: list[int] = []

    async def wait(n: int) -> None:
        await share.acquire("a", 5)
        served.append(n)

    waiters = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await eventually(lambda: share.waiting() == 3, "three in the line")
    await asyncio.wait_for(share.acquire("b", 0.1), 1)  # another key is not held up
    share.release("a")
    share.release("a")
    await eventually(lambda: served == [0, 1], "the first two served, in order")
    assert share.held("a") == 2
    share.release("a")
    await asyncio.gather(*waiters)
    assert served == [0, 1, 2]
    for _ in range(2):
        share.release("a")
    share.release("b")
    assert (share.held("a"), share.held("b"), share.waiting()) == (0, 0, 0)


async def test_a_key_waiting_past_the_timeout_gets_503_and_leaves_the_line() -> None:
    share = KeyShare("primary", 1)
    await share.acquire("a", 1)
    with pytest.raises(PoolExhausted, match="share of primary's connections"):
        await share.acquire("a", 0.05)
    assert share.waiting() == 0
    share.release("a")
    assert share.held("a") == 0


async def test_a_slot_handed_to_a_waiter_that_gives_up_passes_on() -> None:
    share = KeyShare("primary", 1)
    await share.acquire("a", 1)
    first = asyncio.ensure_future(share.acquire("a", 5))
    second = asyncio.ensure_future(share.acquire("a", 5))
    await eventually(lambda: share.waiting() == 2, "two in the line")
    share.release("a")  # handed to `first`...
    first.cancel()  # ...which gives up before it runs again
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # the slot went on to `second`
    assert share.held("a") == 1
    share.release("a")
    assert share.held("a") == 0
