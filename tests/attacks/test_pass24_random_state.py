"""Twenty-fourth review pass (attacker): the state of random() on a pooled connection.

`random()` is a harmless volatile catalog function (app/sql/catalog.py HARMLESS_VOLATILE):
a statement calling it is clean, so its connection goes back as it is, with no reset. But
the backend's generator (xoroshiro128**, PostgreSQL 15 on) is a state of the session that
DISCARD ALL does not touch, and it is not a secret: four outputs of `random()` (52 bits
each) give its whole 128-bit state (`crack`, well under a second), and the generator runs
backwards as easily as forwards. So a read key that shares the pooled connection
- computes the `random()` values another key's earlier requests drew on it (a token, a
  sample, a coupon code made with `random()`), and
- predicts the values another key's later request will draw on it.
Setting the seed is refused (pass 8); reading it is not. The safe behaviour: a key's
`random()` is not derived from what another key can read (e.g. the generator reseeded from a
strong random value whenever a connection goes to another key, or a statement calling
`random()` counted as leaving state: pgbouncer.py already reseeds in `clean_up`, but only
after the database's own code).

Fixed: a statement that may draw from random() (it calls random() or random_normal(), or may
run code of the database's own) starts from a fresh seed of a strong random value, in its own
round trip's unit (app/sql/traces.py draws_random, app/sql/plain.py reseeding), and stays
out of the lanes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from app.devdb import LocalPair
from tests.attacks.conftest import attacked, query, schema_seen
from tests.conftest import as_owner, login_role

pytestmark = pytest.mark.asyncio(loop_scope="module")

MASK = (1 << 64) - 1
LOW = (1 << 57) - 1


def rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & MASK


def step(s0: int, s1: int) -> tuple[int, int, int]:
    """xoroshiro128** as PostgreSQL's pg_prng.c runs it: (output, next s0, next s1)."""
    val = (rotl((s0 * 5) & MASK, 7) * 9) & MASK
    sx = s1 ^ s0
    return val, rotl(s0, 24) ^ sx ^ ((sx << 16) & MASK), rotl(sx, 37)


def back(s0: int, s1: int) -> tuple[int, int]:
    """The state before `step`."""
    sx = ((s1 >> 37) | (s1 << 27)) & MASK
    t = s0 ^ sx ^ ((sx << 16) & MASK)
    p0 = ((t >> 24) | (t << 40)) & MASK
    return p0, sx ^ p0


def high_bits(value: float) -> int:
    """The 52 bits of the generator's output that random() returns (pg_prng_double)."""
    return round(value * 2**52)


def _candidates(high: int) -> set[int]:
    """The low 57 bits of s0 that an output with these 52 high bits may come from: the
    output is rotl(s0 * 5, 7) * 9, and the low 57 bits of s0 follow from those of s0 * 5."""
    out = set()
    inv = pow(5, -1, 1 << 64)
    for k in range(9):  # output + k * 2**64 = 9 * w
        a, b = (high << 12) + (k << 64), (high << 12) + 4095 + (k << 64)
        for top in {(-(-a // 9)) >> 9, (b // 9) >> 9}:
            if top >> 55:
                continue
            for w78 in range(4):
                out.add((((top << 2) | w78) * inv) & LOW)
    return out


def _symbolic(n: int) -> list[list[int]]:
    """s0 of n steps, each bit as the mask of the initial state's 128 bits it xors."""
    s0 = [1 << i for i in range(64)]
    s1 = [1 << (64 + i) for i in range(64)]
    xs = []
    for _ in range(n):
        xs.append(s0)
        sx = [a ^ b for a, b in zip(s1, s0, strict=True)]
        r = [s0[(i - 24) % 64] for i in range(64)]
        sh = [sx[i - 16] if i >= 16 else 0 for i in range(64)]
        s0 = [a ^ b ^ c for a, b, c in zip(r, sx, sh, strict=True)]
        s1 = [sx[(i - 37) % 64] for i in range(64)]
    return xs


def _parity(x: int) -> int:
    return x.bit_count() & 1


def crack(highs: list[int]) -> tuple[int, int]:
    """The generator's state before four consecutive random() outputs: the state is linear
    over GF(2), 57 bits of each s0 are known up to a few dozen choices, and the choices that
    fit are met in the middle."""
    assert len(highs) == 4
    xs = _symbolic(4)
    pivots: list[tuple[int, int, int]] = []
    conditions = []
    for o in range(4):
        for bit in range(57):
            mask, combo = xs[o][bit], 1 << (o * 57 + bit)
            for _, pm, pc in pivots:
                if mask >> (pm.bit_length() - 1) & 1:
                    mask, combo = mask ^ pm, combo ^ pc
            if mask == 0:
                conditions.append(combo)
                continue
            top = mask.bit_length() - 1
            pivots = [
                (b, pm ^ mask, pc ^ combo) if pm >> top & 1 else (b, pm, pc) for b, pm, pc in pivots
            ]
            pivots.append((top, mask, combo))
    assert len(pivots) == 128

    def vec(rhs: int) -> int:
        return sum(_parity(c & rhs) << j for j, c in enumerate(conditions))

    cands = [sorted(_candidates(h)) for h in highs]
    half: dict[int, list[int]] = {}
    for r2 in cands[2]:
        for r3 in cands[3]:
            rhs = (r2 << 114) | (r3 << 171)
            half.setdefault(vec(rhs), []).append(rhs)
    ones = [(vec(r1 << 57), r1 << 57) for r1 in cands[1]]
    for r0 in cands[0]:
        a = vec(r0)
        for b, rhs1 in ones:
            for rest in half.get(a ^ b, ()):
                rhs = r0 | rhs1 | rest
                state = sum(_parity(pc & rhs) << bit for bit, _, pc in pivots)
                s0, s1 = state & MASK, state >> 64
                t0, t1, fits = s0, s1, True
                for h in highs:
                    val, t0, t1 = step(t0, t1)
                    fits = fits and val >> 12 == h
                if fits:
                    return s0, s1
    raise AssertionError("no state fits these outputs")


def as_random(output: int) -> float:
    return (output >> 12) / 2**52


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(pair: LocalPair) -> AsyncIterator[httpx.AsyncClient]:
    role, password = login_role(pair, "lowpriv")
    async with attacked(pair, role, password) as c:
        yield c


async def draws(client: httpx.AsyncClient, key: str, n: int) -> list[float]:
    r = await query(client, key, f"SELECT random() AS r FROM generate_series(1, {n})")
    assert r.status_code == 200, r.text
    return [float(row[0]) for row in r.json()["rows"]]


async def test_a_read_key_does_not_learn_the_random_values_another_key_drew(
    served: httpx.AsyncClient,
) -> None:
    (victims,) = await draws(served, "admin", 1)  # say, a coupon code
    s0, s1 = crack([high_bits(v) for v in await draws(served, "read", 4)])
    guessed = as_random(step(*back(s0, s1))[0])
    assert guessed != victims, "a read key computed the random() value another key drew"


async def test_a_read_key_does_not_foresee_another_keys_random_values(
    served: httpx.AsyncClient,
) -> None:
    s0, s1 = crack([high_bits(v) for v in await draws(served, "read", 4)])
    for _ in range(4):
        _, s0, s1 = step(s0, s1)
    foreseen = as_random(step(s0, s1)[0])
    (victims,) = await draws(served, "admin", 1)
    assert victims != foreseen, "a read key foresaw the random() value of another key"


async def test_a_view_over_random_is_reseeded_too(
    served: httpx.AsyncClient, pair: LocalPair
) -> None:
    """The same read of the state through a view of the owner's over random(): the
    statement names no random(), yet it draws, four values in one statement."""
    as_owner(pair, "CREATE OR REPLACE VIEW public.rand24v AS SELECT random() AS r")
    try:
        await schema_seen(served)
        (victims,) = await draws(served, "admin", 1)
        r = await query(
            served,
            "read",
            "SELECT v.r FROM generate_series(1, 4) AS g,"
            " LATERAL (SELECT r FROM rand24v WHERE g.g > 0) AS v",
        )
        assert r.status_code == 200, r.text
        s0, s1 = crack([high_bits(float(row[0])) for row in r.json()["rows"]])
        guessed = as_random(step(*back(s0, s1))[0])
        assert guessed != victims, "a view over random() gave the read key another key's value"
    finally:
        as_owner(pair, "DROP VIEW IF EXISTS public.rand24v")
