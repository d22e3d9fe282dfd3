"""An answer's header block and body leave in one socket write, and nothing is reordered,
lost or held past the event loop's turn."""

from __future__ import annotations

import asyncio
from typing import Any

from app.api.one_write import OneWriteTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


class Recording(asyncio.Transport):
    """A transport that records the writes that would have been system calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def is_closing(self) -> bool:
        return self.closing


async def test_headers_and_body_go_out_in_one_write() -> None:
    real = Recording()
    transport = OneWriteTransport(real, asyncio.get_running_loop())
    transport.write(HEAD)
    transport.write(b"{}")
    assert real.writes == [HEAD + b"{}"]


async def test_headers_with_no_body_yet_leave_at_the_end_of_the_loops_turn() -> None:
    real = Recording()
    loop = asyncio.get_running_loop()
    transport = OneWriteTransport(real, loop)
    transport.write(HEAD)
    assert real.writes == []
    turned = loop.create_future()
    loop.call_soon(turned.set_result, None)  # queued after the flush
    await turned
    assert real.writes == [HEAD]
    transport.write(b"{}")  # a streamed chunk, later: its own write
    assert real.writes == [HEAD, b"{}"]


async def test_close_and_eof_send_what_is_held_first() -> None:
    for end in ("close", "eof"):
        real = Recording()
        transport = OneWriteTransport(real, asyncio.get_running_loop())
        transport.write(HEAD)
        transport.close() if end == "close" else transport.write_eof()
        assert real.writes == [HEAD]
        assert real.events == [end]


async def test_bodies_and_large_writes_are_never_held() -> None:
    real = Recording()
    transport = OneWriteTransport(real, asyncio.get_running_loop())
    big = b"HTTP/" + b"x" * 20_000 + b"\r\n\r\n"
    transport.write(b"chunk")
    transport.write(big)
    assert real.writes == [b"chunk", big]
