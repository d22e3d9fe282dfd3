"""The JSON answer of a query route, the same bytes and headers from its FastAPI route and
from its fast answer (app/api/fast_lane.py): the body, its type and length, and the node that
served it."""

from __future__ import annotations

from starlette.responses import Response

NODE_HEADER = "X-Mirrorpool-Node"
_NODE = NODE_HEADER.lower().encode()


def json_headers(body: bytes, node: str) -> list[tuple[bytes, bytes]]:
    """The raw headers of a JSON answer from `node`, as Starlette's Response writes them."""
    return [
        (_NODE, node.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]


def json_response(body: bytes, node: str) -> Response:
    """A JSON answer from `node`."""
    response = Response(body, media_type="application/json")
    response.raw_headers = json_headers(body, node)
    return response
