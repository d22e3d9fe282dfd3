"""The hot path: POST /v1/query served straight from ASGI.

FastAPI's per-request machinery (middleware stack, routing, dependency solving) costs more
CPU than the query itself. This lane reads the body, validates it with the same
pydantic model (in pydantic-core, from the raw bytes), runs it through the same
`run_query`, and sends the bytes back. Every other request, and /v1/query itself when
MIRRORPOOL_FAST_PATH=false, goes through FastAPI, which also documents this route.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.api.auth import Keyring
from app.api.disconnect import client_gone
from app.api.errors import error_response, problem_response, validation_problem
from app.api.inflight import InFlight
from app.api.query import NODE_HEADER as NODE
from app.api.query import QueryRequest, result_body, run_query
from app.api.request_id import HEADER, assign_request_id
from app.errors import ClientGone, MirrorpoolError, PayloadTooLarge
from app.settings import Settings
from app.sql.engine import Engine

logger = logging.getLogger(__name__)

PATH = "/v1/query"
NODE_HEADER = NODE.lower().encode()


def _parts(response: Response) -> tuple[int, list[Any], bytes]:
    return response.status_code, list(response.raw_headers), bytes(response.body)


def is_query(scope: Scope) -> bool:
    """True for the requests the lane answers."""
    return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")


class FastQueryLane:
    """Answers POST /v1/query straight from ASGI (see MirrorpoolApp in app/main.py)."""

    def __init__(
        self, engine: Engine, settings: Settings, inflight: InFlight, keyring: Keyring
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.inflight = inflight
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = assign_request_id(scope)
        self.inflight.enter()
        try:
            status, headers, body = await self._answer(scope, receive)
        finally:
            self.inflight.leave()
        headers.append((HEADER, rid.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, list[Any], bytes]:
        try:
            key = self.keyring.identify(scope)
            body = await self._body(scope, receive)
            try:
                request = QueryRequest.model_validate_json(body)
            except ValidationError as exc:
                return _parts(validation_problem(scope, exc.errors(include_input=False)))
            self.keyring.enter(key)
            try:
                outcome = await run_query(
                    request, self.engine, self.settings, partial(client_gone, receive), key
                )
            finally:
                self.keyring.leave(key)
            answer = result_body(outcome, self.settings.max_response_bytes)
        except MirrorpoolError as exc:
            return _parts(error_response(scope, exc))
        except Exception:
            logger.exception("unexpected error in POST %s", PATH)
            return _parts(problem_response(
                scope, 500, "internal", "Internal error",
                "an unexpected error occurred; the service log has the details under this "
                "request id",
            ))  # fmt: skip
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
            (NODE_HEADER, outcome.node.encode()),
        ]
        return 200, headers, answer

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone("the client disconnected before sending the whole request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
