"""JSON request bodies read as one reading: an object that names a key twice is refused.

JSON parsers disagree on `{"sql": "SELECT 1", "sql": "DROP TABLE t"}`: most keep the last
value, some the first, some refuse it. A gateway in front that checks the first would let
the second run, so every JSON body mirrorpool takes, on every route and in the fast answer,
is checked here (400 invalid-request).

The FastAPI routes (JsonRoute) and the fast answer (`model_of`) read a body the same way:
the same parser, the same model validated from what it read, the same errors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from app.errors import ClientGone, DuplicateKey, LimitExceeded, RequestError

Model = TypeVar("Model", bound=BaseModel)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the key {key!r} appears more than once in one JSON object")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique)


def loads_unique(body: bytes | str) -> Any:
    """json.loads of a UTF-8 body, raising DuplicateKey for an object that names a key
    twice (half the cost of json.loads on bytes, which first guesses the encoding),
    LimitExceeded for one nested deeper than it can follow, RequestError for bytes that
    are not UTF-8."""
    try:
        return _DECODER.decode(body.decode() if isinstance(body, bytes) else body)
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    except RecursionError:
        raise LimitExceeded("the request body nests too deeply to be read") from None


def model_of(model: type[Model], body: bytes) -> Model:
    """The body as `model`, read and validated as FastAPI reads a JsonRoute's body; its
    faults raised as FastAPI raises them (RequestValidationError, located under `body`)."""
    if not body:
        # FastAPI reads an empty body as none at all.
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        data = loads_unique(body)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def check_unique_keys(body: bytes) -> None:
    """DuplicateKey when a JSON object in `body` names a key twice (LimitExceeded when it
    nests too deeply to tell); for a body another parser read, whose faults it reports."""
    with contextlib.suppress(json.JSONDecodeError):
        loads_unique(body)


class UniqueKeysRequest(Request):
    """A Starlette request whose JSON body is read by loads_unique(), and whose client
    leaving before the whole body arrived is ClientGone, as for the fast answer."""

    async def body(self) -> bytes:
        """The whole body (ClientGone when the client left first)."""
        try:
            return await super().body()
        except ClientDisconnect:
            raise ClientGone("the client disconnected before sending the whole request") from None

    async def json(self) -> Any:
        """The body's JSON (DuplicateKey for a key named twice)."""
        if not hasattr(self, "_json"):
            self._json = loads_unique(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A FastAPI route whose JSON body is read by loads_unique() (`route_class` of our
    routers)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, given a UniqueKeysRequest."""
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(UniqueKeysRequest(request.scope, request.receive))

        return route
