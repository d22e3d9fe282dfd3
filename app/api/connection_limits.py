"""Limits on what an HTTP connection may cost before the app sees a request: the size and
count of headers, the time a request may take to arrive, and idle keep-alive connections.

uvicorn's httptools protocol enforces none of these (a 16 MB header block is buffered whole,
a client sending a byte every few seconds is never cut off, a connection that sends nothing
stays open), and h11 would cost the hot path a third of its throughput. So the limits live
in a subclass of uvicorn's httptools protocol, where the bytes arrive:

- a header block (request line and headers) over `header_bytes` gets 431 and the connection
  is closed: the parser is fed at most that many bytes of it, so it never holds more;
- more than `max_headers` header lines get 431 too;
- a request must have arrived whole (headers and body) within `read_timeout_s` of its first
  byte, else 408 (when no answer was started) and the connection is closed;
- a connection with no request in progress is closed after uvicorn's keep-alive timeout,
  counted from its last answer (uvicorn's own timer) or from when it opened (uvicorn sets
  none then), and blank lines do not restart it.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson
from starlette.types import Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.api.one_write import OneWriteTransport
from app.api.request_id import request_id_of
from app.settings import Settings

PROBLEM_BASE = "urn:mirrorpool:problem:"
# Seconds a refused connection is still read from (and what arrives dropped) before closing.
LINGER_S = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one HTTP connection may send, and how slowly."""

    header_bytes: int
    max_headers: int
    read_timeout_s: float


class _TooManyHeaders(Exception):
    """Raised from the parser's header callback to stop it at the header limit."""


def problem_bytes(status: int, slug: str, title: str, detail: str, rid: str | None) -> bytes:
    """A whole problem+json HTTP response that closes the connection, for answers given
    before (or instead of) the app."""
    body = orjson.dumps(
        {
            "type": PROBLEM_BASE + slug,
            "title": title,
            "status": status,
            "detail": detail,
            "request_id": rid,
        }
    )
    head = (
        b"content-type: application/problem+json\r\n"
        b"content-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body)
    )
    return STATUS_LINE[status] + head + body


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, read-time and idle limits."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        # Bytes of the header block being received, or None while a body is.
        self._head_bytes: int | None = 0
        self._heads_done = 0
        self._read_deadline: asyncio.TimerHandle | None = None
        # When the request being received began to arrive (loop time), None between requests.
        self._begun: float | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """As uvicorn's, with an answer's headers and body sent in one write (one_write.py),
        and a connection that never sends a request is idle from here."""
        super().connection_made(transport)
        self.transport = OneWriteTransport(transport, self.loop)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        """As uvicorn's, and no timer is left behind."""
        self._disarm_read()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, never more than the header limit of one header block."""
        if self._refused:
            return  # read and dropped, so the answer is not lost to a reset
        if self._head_bytes is not None:
            room = self.limits.header_bytes - self._head_bytes
            if len(data) > room:
                head, data = data[:room], data[room:]
                heads = self._heads_done
                if head and not self._feed(head):
                    return
                if self._heads_done == heads:
                    self._refuse_headers(f"larger than {self.limits.header_bytes} bytes")
                    return
            else:
                self._head_bytes += len(data)
        if data and not self._feed(data):
            return
        if self._begun is not None and self._read_deadline is None:
            # Most requests arrive in one read and need no timer; this one is still coming.
            self._read_deadline = self.loop.call_at(
                self._begun + self.limits.read_timeout_s, self._read_timed_out
            )

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except _TooManyHeaders:
            self._refuse_headers(f"more than {self.limits.max_headers} header fields")
            return False
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TooManyHeaders):
                self._refuse_headers(f"more than {self.limits.max_headers} header fields")
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def _refuse(self, answer: bytes) -> None:
        """Send `answer` and close. Closing a socket with unread bytes makes the kernel reset
        the connection, and a client still sending then loses the answer: so the write side is
        shut first, and what the client still sends is read and dropped for up to a second."""
        self._disarm_read()
        self._unset_keepalive_if_required()
        self._refused = True
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _refuse_headers(self, what: str) -> None:
        self._refuse(
            problem_bytes(
                431, "headers-too-large", "The request's headers are too large",
                f"the request's header block is {what} (MIRRORPOOL_MAX_HEADER_BYTES, "
                "MIRRORPOOL_MAX_HEADERS)",
                None,
            )
        )  # fmt: skip

    # Parser callbacks

    def on_message_begin(self) -> None:
        """A request's first byte: the connection is no longer idle, and the request has
        `read_timeout_s` to arrive whole."""
        super().on_message_begin()
        self._unset_keepalive_if_required()
        self._begun = self.loop.time()

    def on_headers_complete(self) -> None:
        """The header block is in (within its byte limit): count its fields, then the body
        arrives."""
        if len(self.headers) > self.limits.max_headers:
            raise _TooManyHeaders
        self._head_bytes = None
        self._heads_done += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The request arrived whole: its read deadline is met."""
        self._disarm_read()
        self._head_bytes = 0
        super().on_message_complete()

    # Timers

    def _arm_idle(self) -> None:
        # (after an answer, uvicorn's own keep-alive timer: MIRRORPOOL_KEEP_ALIVE_TIMEOUT_S)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _disarm_read(self) -> None:
        self._begun = None
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self._head_bytes is None else None
        if cycle is not None:
            # The app, still waiting for the body, hears that the client is gone; its own
            # answer is dropped, since this one was sent.
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is None or not cycle.response_started:
            rid = request_id_of(cast("Scope", cycle.scope)) if cycle is not None else None
            self._refuse(
                problem_bytes(
                    408, "request-timeout", "The request took too long to arrive",
                    f"the request did not arrive whole within {self.limits.read_timeout_s:g} s "
                    "(MIRRORPOOL_REQUEST_READ_TIMEOUT_S)",
                    rid,
                )
            )  # fmt: skip
        else:
            self.transport.close()


def protocol_factory(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """What uvicorn's `http` setting takes: the protocol class with `limits` bound (a
    partial, so worker processes get it pickled)."""
    return cast("type[asyncio.Protocol]", functools.partial(LimitedHttpProtocol, limits=limits))


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The limits the settings give."""
    return ConnectionLimits(
        header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        read_timeout_s=settings.request_read_timeout_s,
    )
