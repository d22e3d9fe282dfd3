"""The hot paths: POST /v1/query, /v1/transaction and /sql served straight from ASGI.

FastAPI's per-request machinery (middleware stack, routing, dependency solving) costs more
CPU than the query itself. This lane reads the body, validates it with the same
pydantic model (in pydantic-core, from the raw bytes), runs it through the same
`run_query` or `run_transaction`, and sends the bytes back (/sql: the same `neon.answer` as
its FastAPI route). Every other request, and these when MIRRORPOOL_FAST_PATH=false, go
through FastAPI, which also documents them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api import neon
from app.api.auth import ApiKey, Keyring, caller_of
from app.api.body_limit import read_body
from app.api.disconnect import client_gone
from app.api.errors import error_response, problem_response, validation_problem
from app.api.inflight import InFlight
from app.api.json_body import check_unique_keys
from app.api.query import NODE_HEADER as NODE
from app.api.query import (
    QueryRequest,
    TransactionRequest,
    result_body,
    run_query,
    run_transaction,
    transaction_body,
)
from app.api.request_id import HEADER, assign_request_id
from app.errors import MirrorpoolError
from app.settings import Settings
from app.sql.engine import Abort, Engine, Outcome

logger = logging.getLogger(__name__)

NODE_HEADER = NODE.lower().encode()


@dataclass(frozen=True, slots=True)
class _Route:
    """How the lane answers one path: the body's model, the work, the answer's encoding."""

    model: type[BaseModel]
    run: Callable[[Any, Engine, Settings, Abort, ApiKey], Awaitable[Outcome]]
    encode: Callable[[Outcome, Settings], bytes]


ROUTES = {
    "/v1/query": _Route(
        QueryRequest, run_query, lambda out, settings: result_body(out, settings.max_response_bytes)
    ),
    "/v1/transaction": _Route(
        TransactionRequest, run_transaction, lambda out, settings: transaction_body(out)
    ),
}


def _parts(response: Response) -> tuple[int, list[Any], bytes]:
    return response.status_code, list(response.raw_headers), bytes(response.body)


def is_query(scope: Scope) -> bool:
    """True for the requests the lane answers."""
    return bool(
        scope["type"] == "http"
        and (scope["path"] in ROUTES or scope["path"] == neon.PATH)
        and scope["method"] == "POST"
    )


class FastQueryLane:
    """Answers POST /v1/query and /v1/transaction straight from ASGI (see app/main.py)."""

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
            if scope["path"] == neon.PATH:
                neon_answer = await neon.answer(
                    scope, receive, self.engine, self.settings, self.keyring
                )
                return _parts(neon_answer)
            route = ROUTES[scope["path"]]
            key = caller_of(scope, self.keyring)  # counted by the gate (app/api/gate.py)
            body = await read_body(scope, receive, self.settings.max_body_bytes)
            try:
                request = route.model.model_validate_json(body)
            except ValidationError as exc:
                return _parts(validation_problem(scope, exc.errors(include_input=False)))
            check_unique_keys(body)
            outcome = await route.run(
                request, self.engine, self.settings, partial(client_gone, receive), key
            )
            answer = route.encode(outcome, self.settings)
        except MirrorpoolError as exc:
            return _parts(error_response(scope, exc))
        except Exception:
            logger.exception("unexpected error in POST %s", scope["path"])
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
