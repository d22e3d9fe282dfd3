"""Request bodies over MIRRORPOOL_MAX_BODY_BYTES are refused with 413 before anything parses
them: by their Content-Length in the gate (app/api/gate.py), or, sent without one, as their
bytes arrive (`limited`)."""

from __future__ import annotations

from starlette.types import Message, Receive

from app.errors import ClientGone, PayloadTooLarge


def too_large(limit: int) -> PayloadTooLarge:
    """The error of a body over `limit` bytes."""
    return PayloadTooLarge(f"the request body is larger than {limit} bytes")


def limited(receive: Receive, limit: int) -> Receive:
    """`receive` for a body sent without Content-Length: PayloadTooLarge, raised inside the
    app (its error handlers answer 413 problem+json), once more than `limit` bytes came."""
    received = 0

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)
        return message

    return counting_receive


async def read_body(receive: Receive) -> bytes:
    """The whole request body, for endpoints answered without Starlette's Request (the fast
    answer, /sql); the gate has already bounded it."""
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected before sending the whole request")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
