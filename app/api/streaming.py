"""A streamed answer whose client must keep reading it.

A client that stops reading a /v1/query/stream would hold its backend, its transaction and
its snapshot (which holds back VACUUM) for as long as it stays connected: the server's
statement_timeout does not fire while the backend waits to write. Each part of the answer
must be taken by the client within MIRRORPOOL_STREAM_IDLE_TIMEOUT_S; when one is not, the
stream is ended: its rows stop being read, the statement and its transaction end on the
server (the engine's guard, app/sql/guard.py), and the HTTP connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class StreamStalled(Exception):
    """The client took nothing of the answer for the idle timeout."""


class IdleLimitedStream(StreamingResponse):
    """A StreamingResponse ended when a part of it waits `idle_s` seconds for its client."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        idle_s: float,
        media_type: str,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.idle_s = idle_s
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded(message: Message) -> None:
            try:
                async with asyncio.timeout(self.idle_s):
                    await send(message)
            except TimeoutError:
                raise StreamStalled from None

        try:
            await super().__call__(scope, receive, bounded)
        except BaseException as exc:
            if not _stalled(exc):
                raise
            logger.warning(
                "%s %s: the client read nothing for %g s; the stream and its transaction are ended",
                scope.get("method", ""),
                scope.get("path", ""),
                self.idle_s,
            )
            # Ends the rows' generator now: the engine ends the statement on the server.
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()


def _stalled(exc: BaseException) -> bool:
    if isinstance(exc, StreamStalled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_stalled(e) for e in exc.exceptions)
    return False
