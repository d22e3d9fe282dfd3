"""A TCP proxy between a PostgreSQL client and its server (or pooler) that holds the client's
stream for a moment after chosen statements: the hiccup a busy machine gives a backend at
random (descheduled mid-unit), or another session's cancel, put where a test wants it.

Statements are counted per connection from the transaction's end: each Parse of `COMMIT` or
`ROLLBACK` starts a count at 0, and the Parses after it are positions 0, 1, ... (`after_end`
keeps their texts, for the last end seen). With `stall_after` holding a position, the proxy
forwards that statement's Parse, then waits `stall_s` before it forwards the rest: the
server has the statement (its statement timeout started) and waits for the Bind. The
server's side of the stream passes through as it comes, each piece `reply_delay_s` late: a
client slow to read its answers (an event loop busy with other requests)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# Untyped packets before the startup message: SSLRequest, GSSENCRequest, CancelRequest.
_BEFORE_STARTUP = {80877103, 80877104, 80877102}
_ENDS = {"COMMIT", "ROLLBACK"}


class StallingProxy:
    def __init__(self, target_port: int, stall_s: float = 0.005) -> None:
        self.target_port = target_port
        self.stall_s = stall_s
        self.stall_after: set[int] = set()
        self.reply_delay_s = 0.0
        self.after_end: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        down = asyncio.ensure_future(self._server_to_client(up_r, writer))
        try:
            await self._client_to_server(reader, up_w)
        finally:
            up_w.close()
            await asyncio.wait([down], timeout=5)
            down.cancel()
            writer.close()

    async def _server_to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.reply_delay_s:
                    await asyncio.sleep(self.reply_delay_s)  # the slow reader, not a wait
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The startup phase: untyped packets (length, then code) up to the startup message.
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            writer.write(head + await reader.readexactly(length - 8))
            await writer.drain()
            if code == 80877102:  # a cancel request: nothing follows
                return
            if code not in _BEFORE_STARTUP:
                break
        # Then typed messages: what came in one read goes on in one write, but for a stall.
        position: int | None = None
        pending = b""
        while data := await reader.read(65536):
            pending += data
            start = 0
            while len(pending) - start >= 5:
                length = struct.unpack("!i", pending[start + 1 : start + 5])[0]
                end = start + 1 + length
                if end > len(pending):
                    break
                kind, body = pending[start : start + 1], pending[start + 5 : end]
                start = end
                if kind != b"P":
                    continue
                text = body.split(b"\0", 2)[1].decode("utf-8", "replace")
                if text in _ENDS:
                    position, self.after_end = 0, []
                    continue
                if position is None:
                    continue
                self.after_end.append(text)
                if position in self.stall_after:
                    writer.write(pending[:start])
                    pending, start = pending[start:], 0
                    await writer.drain()
                    await asyncio.sleep(self.stall_s)  # the hiccup itself, not a wait
                position += 1
            writer.write(pending[:start])
            pending = pending[start:]
            await writer.drain()


@asynccontextmanager
async def stalling_proxy(target_port: int, stall_s: float = 0.005) -> AsyncIterator[StallingProxy]:
    """A StallingProxy listening on a free loopback port, in front of `target_port`."""
    proxy = StallingProxy(target_port, stall_s)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
            await proxy._serve(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()
