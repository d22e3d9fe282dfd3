"""JSON request bodies read as one reading: an object that names a key twice is refused.

JSON parsers disagree on `{"sql": "SELECT 1", "sql": "DROP TABLE t"}`: most keep the last
value, some the first, some refuse it. A gateway in front that checks the first would let
the second run, so every JSON body mirrorpool takes, on every route and in the fast lane,
is checked here (400 invalid-request).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.errors import DuplicateKey, LimitExceeded


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
    twice (half the cost of json.loads on bytes, which first guesses the encoding)."""
    return _DECODER.decode(body.decode() if isinstance(body, bytes) else body)


def check_unique_keys(body: bytes) -> None:
    """DuplicateKey when a JSON object in `body` names a key twice; call it once the body
    passed its model (other faults are the model's to report)."""
    try:
        loads_unique(body)
    except RecursionError:
        # Deeper than the check can follow (orjson, which read it, goes deeper): what a
        # gateway saw of it cannot be told, so it is refused.
        raise LimitExceeded("the request body nests too deeply to be read") from None
    except ValueError as exc:
        if isinstance(exc, DuplicateKey):
            raise


class UniqueKeysRequest(Request):
    """A Starlette request whose JSON body is read by loads_unique()."""

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
