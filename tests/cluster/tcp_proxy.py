"""A TCP proxy that behaves like a Kubernetes Service (or HAProxy) in front of PostgreSQL.

`route()` changes where NEW connections go; connections already made keep the server they
reached, exactly as a Service re-routes after a failover. With no target, a new connection
is accepted and closed at once, as when a Service has no endpoint left.
"""

from __future__ import annotations

import asyncio
import contextlib

from psycopg.conninfo import make_conninfo

from app.devdb import free_ports

CHUNK = 65536


class TcpProxy:
    """Listens on 127.0.0.1:`port` and forwards each connection to 127.0.0.1:`target`."""

    def __init__(self, target: int | None) -> None:
        self.port = free_ports(1)[0]
        self.target = target
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._sockets: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        return f"<TcpProxy 127.0.0.1:{self.port} -> {self.target}>"

    def dsn(self, dsn: str) -> str:
        """`dsn` (a LocalNode's, on 127.0.0.1) with its port replaced by this proxy's."""
        return make_conninfo(dsn, port=self.port)

    def route(self, target: int | None) -> None:
        """Send new connections to `target` (None: refuse them); old ones stay where they are."""
        self.target = target

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        # Closing the sockets ends every link by itself (cancelling the tasks start_server
        # made would have asyncio log each cancellation as an error).
        for sock in list(self._sockets):
            sock.close()
        await asyncio.gather(*self._links, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self._sockets.add(client_w)
        self.accepted += 1
        target = self.target  # chosen once, at connect time, like a Service's DNAT
        try:
            if target is None:
                return
            try:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                return
            self._sockets.add(server_w)
            try:
                await asyncio.gather(
                    _pipe(client_r, server_w), _pipe(server_r, client_w), return_exceptions=True
                )
            finally:
                server_w.close()
                self._sockets.discard(server_w)
        finally:
            client_w.close()
            self._sockets.discard(client_w)
            self._links.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until one side ends, then end the other: a crashed server drops its clients."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    finally:
        with contextlib.suppress(OSError):
            sink.close()
