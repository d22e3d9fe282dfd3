"""One socket write per answer instead of two.

uvicorn's httptools protocol writes an answer's status line and headers in one
`transport.write` and its body in another, and a write to an idle socket is a `send` system
call at once: on a loopback connection the kernel also delivers it to the client inside that
call. A profile of point selects showed the two sends as a sixth of the service's CPU at one
client. `OneWriteTransport` holds a header block back until the body's write (normally in the
same turn of the event loop, since nothing awaits between the two) and sends both in one
call. Whatever is held is sent at the end of the loop's turn at the latest, before a close or
an end of file, so a streamed answer's headers are never held behind a slow first chunk, and
the order of bytes is never changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

# A header block is far smaller than this; larger writes are never held.
HOLD_AT_MOST = 16 * 1024


class OneWriteTransport(asyncio.Transport):
    """A transport that joins a held header block to the next write."""

    __slots__ = ("_flush_at_end", "_held", "_loop", "_real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._real = real
        self._held: bytes | None = None
        self._flush_at_end: asyncio.Handle | None = None
        self._loop = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._real.write(held + bytes(data))
            return
        if len(data) <= HOLD_AT_MOST and bytes(data[:5]) == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)
            if self._flush_at_end is None:
                self._flush_at_end = self._loop.call_soon(self._flush)
            return
        self._real.write(data)

    def _flush(self) -> None:
        self._flush_at_end = None
        held, self._held = self._held, None
        if held is not None and not self._real.is_closing():
            self._real.write(held)

    def flush(self) -> None:
        if self._held is not None:
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        self.flush()
        self._real.writelines(list_of_data)

    def write_eof(self) -> None:
        self.flush()
        self._real.write_eof()

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._real.close()

    def abort(self) -> None:
        self._held = None
        self._real.abort()

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._real.get_protocol()

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()
