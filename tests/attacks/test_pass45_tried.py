"""Pass 45, what held.

1. The SCRAM probe against a misbehaving server of the test's own (127.0.0.1, asyncio):
   a message length of 2**31 - 1, an ErrorResponse, a server that never answers, a salt
   new at every login, 10**9 iterations, a nonce that is not the client's. Each probe ends
   within the target's connect timeout (plus the 1 s close), answers "no keys", derives
   nothing over MAX_ITERATIONS, and leaves no socket open on the server's side.
2. Secrets in reprs: Keys, Login (its keyed conninfo) and Target (sslpassword) print none.
3. The transaction's bound of 16 made (pass 44) in the spellings the brief lists that the
   tree counts: CREATE MATERIALIZED VIEW, SELECT ... INTO, CREATE TABLE ... PARTITION OF,
   ALTER TABLE ... ADD UNIQUE and ADD COLUMN serial count (refused past 16). What did not
   hold, a rewriting ALTER TABLE / CLUSTER, is test_pass45_rewrites_fill_lock_table.py.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from app.cluster.scram import Keys, Target, keys_for, probe_outcome, with_keys
from app.cluster.scram_keys import Login
from app.devdb import LocalPair
from app.sql.lock_code import made_refusal
from app.sql.tree import parse
from tests.attacks.conftest import attacked_on, transaction
from tests.attacks.test_pass42_large_object_locks import SETUP, TEARDOWN
from tests.waiting import eventually

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@asynccontextmanager
async def fake_server(answer: Answer) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on 127.0.0.1 answering each connection with `answer` (its index given); the
    port and how many connections are still open."""
    open_now = [0]
    seen = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_now[0] += 1
        seen[0] += 1
        try:
            await reader.readexactly(8)  # SSLRequest
            writer.write(b"N")
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            await reader.readexactly(length - 4)  # StartupMessage
            await answer(reader, writer, seen[0])
            await reader.read()  # until the client hangs up
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            open_now[0] -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, open_now
    finally:
        server.close()


def target(port: int) -> Target:
    return Target("127.0.0.1", port, "u45", "d45", "prefer", 2.0, None)


def auth(code: int, data: bytes) -> bytes:
    body = struct.pack("!i", code) + data
    return b"R" + struct.pack("!i", len(body) + 4) + body


async def sasl(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Offer SCRAM-SHA-256; the client's nonce."""
    writer.write(auth(10, b"SCRAM-SHA-256\0\0"))
    await writer.drain()
    assert await reader.readexactly(1) == b"p"
    (length,) = struct.unpack("!i", await reader.readexactly(4))
    data = await reader.readexactly(length - 4)
    return data.split(b"r=", 1)[1]


def first(nonce: bytes, salt: bytes, iterations: int) -> bytes:
    return auth(11, b"r=" + nonce + b"srv,s=" + base64.b64encode(salt) + b",i=%d" % iterations)


async def huge_length(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    w.write(b"R" + struct.pack("!i", 2**31 - 1) + b"\0" * 64)


async def error(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    body = b"SFATAL\0C28P01\0Mno\0\0"
    w.write(b"E" + struct.pack("!i", len(body) + 4) + body)


async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    await r.read()  # says nothing until the client hangs up


async def new_salt(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    w.write(first(await sasl(r, w), b"salt%d" % n, 4096))


async def many_rounds(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    w.write(first(await sasl(r, w), b"salt", 10**9))


async def other_nonce(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
    await sasl(r, w)
    w.write(first(b"x", b"salt", 4096))


@pytest.mark.parametrize("answer", [huge_length, error, silent, new_salt, many_rounds, other_nonce])
async def test_a_misbehaving_server_gives_no_keys_in_bounded_time(answer: Answer) -> None:
    async with fake_server(answer) as (port, open_now):
        started = time.monotonic()
        found = await keys_for(target(port), "pw45")
        took = time.monotonic() - started
        assert not isinstance(found, Keys)
        assert took < 2.0 * 2 + 2.5, took  # two probes, each within 2 s and a 1 s close

        async def closed() -> bool:
            return not open_now[0]  # (the server's side saw the hang-up)

        await eventually(closed, "the probes' sockets to close", 5, 0.01)


async def test_a_silent_server_is_given_up_within_the_timeout() -> None:
    async with fake_server(silent) as (port, _):
        started = time.monotonic()
        assert await probe_outcome(target(port)) is False
        assert time.monotonic() - started < 3.5


def test_reprs_print_no_secret() -> None:
    keys = Keys("Q0xJRU5US0VZNDU=", "U0VSVkVSS0VZNDU=")
    conninfo = with_keys({"host": "127.0.0.1", "user": "u45", "password": "pw45"}, keys)
    t = Target("127.0.0.1", 5432, "u45", "d45", "require", 2.0, None, sslpassword="tls45")
    login = Login(("127.0.0.1", 5432, "u45", "x"), t, "pw45", keys, conninfo)
    for text in (repr(keys), repr(login), repr(t), str(login)):
        for secret in ("pw45", "tls45", keys.client, keys.server):
            assert secret not in text, text
    assert "pw45" not in conninfo


COUNTED = (
    [f"CREATE MATERIALIZED VIEW pg_temp.m45_{i} AS SELECT {i}" for i in range(17)],
    [f"SELECT {i} AS a INTO TEMP s45_{i}" for i in range(17)],
    [
        "CREATE TEMP TABLE q45 (a int) PARTITION BY LIST (a)",
        *(f"CREATE TEMP TABLE q45_{i} PARTITION OF q45 FOR VALUES IN ({i})" for i in range(16)),
    ],
    [
        "CREATE TEMP TABLE w45 (a int, b int, c int, d int)",
        *(f"ALTER TABLE w45 ADD UNIQUE (a, b, c, d), ADD COLUMN e{i} serial" for i in range(8)),
    ],
)


@pytest.mark.parametrize("sqls", COUNTED, ids=["matview", "into", "partition-of", "alter-add"])
def test_these_spellings_count_toward_the_transactions_bound(sqls: list[str]) -> None:
    assert made_refusal([parse(sql) for sql in sqls]) is not None


async def test_the_bound_is_refused_by_the_service(pair: LocalPair) -> None:
    async with attacked_on(pair, SETUP, TEARDOWN) as client:
        for sqls in COUNTED:
            r = await transaction(client, "write", *sqls)
            assert r.status_code == 400, f"{sqls[0]}: {r.text}"
