"""The fast answer: POST /v1/query, /v1/transaction and /sql as plain ASGI endpoints.

FastAPI's per-request machinery (routing, dependency solving, its request and response
objects) costs more CPU than the query itself. These endpoints skip it, and only it: they are
the innermost layer of the one middleware stack (app/main.py), so their requests pass the
same request id, gate, body limit, in-flight count, access log, metrics and error handlers
as every other, in the same order. An endpoint reads the body as its FastAPI route does
(app/api/json_body.py), validates it with the same model, runs the same service function
(app/service/query.py) and answers the same bytes and headers (app/api/answers.py); what it
raises is answered by the same handlers (app/api/errors.py). With MIRRORPOOL_FAST_PATH=false
the FastAPI routes, which also document these paths, answer them instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.answers import json_headers
from app.api.auth import Keyring, caller_of
from app.api.body_limit import read_body
from app.api.disconnect import client_gone
from app.api.json_body import model_of
from app.service.keys import ApiKey
from app.settings import Settings
from app.sql.engine import Abort, Engine, Outcome

Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]
# A path's route (the FastAPI route that documents it) and its fast answer.
FastRoute = tuple[BaseRoute, Endpoint]


def route_at(router: APIRouter, path: str) -> BaseRoute:
    """The POST route of `router` at `path`."""
    return next(
        route
        for route in router.routes
        if isinstance(route, APIRoute) and route.path == path and "POST" in (route.methods or ())
    )


@dataclass(frozen=True, slots=True)
class JsonEndpoint:
    """A JSON route's fast answer: the body's model, the service function, its encoder."""

    model: type[BaseModel]
    run: Callable[[Any, Engine, Settings, Abort, ApiKey], Awaitable[Outcome]]
    encode: Callable[[Outcome], bytes]
    engine: Engine
    settings: Settings
    keyring: Keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request; what fails is raised to the stack's error handlers."""
        key = caller_of(scope, self.keyring)  # identified and counted by the gate
        request = model_of(self.model, await read_body(receive))
        outcome = await self.run(
            request, self.engine, self.settings, partial(client_gone, receive), key
        )
        body = self.encode(outcome)
        headers = json_headers(body, outcome.node)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True, slots=True)
class ResponseEndpoint:
    """A fast answer that is its route's own function of the scope (Neon's /sql)."""

    answer: Callable[[Scope, Receive], Awaitable[Response]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the route's answer."""
        response = await self.answer(scope, receive)
        await response(scope, receive, send)


class FastAnswers:
    """ASGI, inside the stack's error handlers: a POST to one of `endpoints` is answered by
    it, as the route at that path (`scope["route"]`, which metrics and the access log read);
    every other request goes on to FastAPI (`app`)."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, FastRoute]) -> None:
        self.app = app
        self.endpoints = dict(endpoints)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine of its own: the answer is awaited by the caller, one frame less on
        # every suspension of the request.
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.endpoints.get(scope["path"])
            if found is not None:
                scope["route"], endpoint = found
                return endpoint(scope, receive, send)
        return self.app(scope, receive, send)
