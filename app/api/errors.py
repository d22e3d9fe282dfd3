"""The one place errors become HTTP: application/problem+json (RFC 9457) for every failure."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app import errors as e
from app.api import examples
from app.api.metrics import count_problem
from app.api.request_id import request_id_of

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:mirrorpool:problem:"
PROBLEM_REF = "#/components/schemas/Problem"

# (status, type slug, title) of each error class; subclasses inherit their parent's entry.
_PROBLEMS: dict[type[e.MirrorpoolError], tuple[int, str, str]] = {
    e.InvalidSQL: (400, "invalid-sql", "The SQL cannot be run"),
    e.InvalidParameters: (400, "invalid-parameters", "The parameters do not fit the SQL"),
    e.LimitExceeded: (400, "limit-exceeded", "The request exceeds a limit"),
    e.PayloadTooLarge: (413, "payload-too-large", "The request body is too large"),
    e.UnsupportedMediaType: (415, "unsupported-media-type", "The request body is not JSON"),
    e.DuplicateKey: (400, "invalid-request", "The request is malformed"),
    e.ResultTooLarge: (507, "result-too-large", "The result is over the limits"),
    e.Forbidden: (403, "forbidden", "Not allowed"),
    e.Unauthorized: (401, "unauthorized", "Authentication required"),
    e.TooManyRequests: (429, "too-many-requests", "Too many requests in flight"),
    e.NotFound: (404, "not-found", "Not found"),
    e.Conflict: (409, "conflict", "Conflicts with the current state"),
    e.RequestError: (400, "bad-request", "Bad request"),
    e.NoWriterError: (503, "no-writer", "No writable database node is available"),
    e.NoReaderError: (503, "no-reader", "No database node is available for reads"),
    e.PoolExhausted: (503, "pool-exhausted", "No database connection is free"),
    e.NodeFailed: (503, "node-failed", "The database node failed during the request"),
    e.ClusterError: (503, "unavailable", "The database is unavailable"),
    e.QueryTimeout: (504, "timeout", "The statement timed out"),
    e.OutcomeUnknown: (503, "outcome-unknown", "The write's outcome is unknown"),
    e.ClientGone: (499, "client-closed-request", "The client closed the request"),
    e.DatabaseError: (400, "database-error", "The database rejected the statement"),
    # The deployment's files, not the request, are wrong: a server-side error.
    e.MigrationFolderError: (409, "migration-folder", "The migration folder cannot be read"),
}

# SQLSTATE -> HTTP status: exact codes first, then two-character classes.
SQLSTATE_STATUS: dict[str, int] = {
    "25006": 403,  # read_only_sql_transaction
    "42501": 403,  # insufficient_privilege
    "57014": 504,  # query_canceled (statement_timeout)
    "40001": 409,  # serialization_failure
    "40P01": 409,  # deadlock_detected
    "55P03": 409,  # lock_not_available (lock_timeout)
    "53300": 503,  # too_many_connections
    "57P01": 503,  # admin_shutdown
    "57P02": 503,  # crash_shutdown
    "57P03": 503,  # cannot_connect_now
}
SQLSTATE_CLASS_STATUS: dict[str, int] = {
    "08": 503,  # connection exception
    "0A": 400,  # feature not supported
    "21": 400,  # cardinality violation
    "22": 400,  # data exception
    "23": 409,  # integrity constraint violation
    "25": 400,  # invalid transaction state
    "28": 403,  # invalid authorization
    "2B": 409,  # dependent privilege descriptors still exist
    "3D": 400,  # invalid catalog name
    "3F": 400,  # invalid schema name
    "40": 409,  # transaction rollback
    "42": 400,  # syntax error or access rule violation
    "44": 409,  # WITH CHECK OPTION violation
    "53": 503,  # insufficient resources
    "54": 400,  # program limit exceeded
    "55": 409,  # object not in prerequisite state
    "57": 503,  # operator intervention
    "58": 502,  # system error
    "P0": 400,  # PL/pgSQL raise
    "XX": 502,  # internal error
}
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


class Problem(BaseModel):
    """An error, as application/problem+json (RFC 9457)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:mirrorpool:problem:database-error"])
    title: str = Field(examples=["The database rejected the statement"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=['duplicate key value violates unique constraint "users_pkey"'])
    request_id: str | None = Field(None, examples=["5f0c6a2e9d3b4f7a"])
    sqlstate: str | None = Field(None, description="PostgreSQL's SQLSTATE, for database errors.")
    retryable: bool | None = Field(None, description="true when the same request may succeed.")
    database: dict[str, Any] | None = Field(
        None,
        description="PostgreSQL's diagnostics: message, detail, hint, position, schema, table, "
        "column, datatype, constraint, where, severity.",
    )


def status_for_sqlstate(sqlstate: str | None) -> int:
    """The HTTP status of a database error."""
    if not sqlstate:
        return 400
    return SQLSTATE_STATUS.get(sqlstate) or SQLSTATE_CLASS_STATUS.get(sqlstate[:2], 400)


def problem_response(
    scope: Scope | None,
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem+json response carrying the request id."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id_of(scope) if scope else None,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    if scope is not None:
        scope.setdefault("state", {})["problem"] = slug  # for the access log
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def error_response(scope: Scope | None, exc: e.MirrorpoolError) -> Response:
    """The problem+json response for one of our errors (counted in /metrics)."""
    count_problem(scope, exc)
    if scope is not None and isinstance(exc, e.DatabaseError):
        scope.setdefault("state", {})["sqlstate"] = exc.sqlstate  # for the access log
    status, slug, title = next(
        (_PROBLEMS[cls] for cls in type(exc).__mro__ if cls in _PROBLEMS),
        (500, "internal", "Internal error"),
    )
    extra = dict(exc.extra)
    headers: dict[str, str] = {}
    if isinstance(exc, e.DatabaseError):
        status = status_for_sqlstate(exc.sqlstate)
        extra["sqlstate"] = exc.sqlstate
        if exc.sqlstate in RETRYABLE_SQLSTATES or status == 503:
            extra["retryable"] = True
    if isinstance(exc, e.ClusterError):
        extra["retryable"] = True
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, e.OutcomeUnknown):
        extra["retryable"] = False  # it may have committed: no Retry-After either
    elif isinstance(exc, e.TooManyRequests):
        headers["Retry-After"] = "1"
    elif isinstance(exc, e.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:
        headers["Retry-After"] = "1"
    return problem_response(scope, status, slug, title, exc.detail, headers, **extra)


# Where a request's value came from, as FastAPI's validation errors name it.
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
# A location part pydantic adds for the member of a union it tried ("list[any]", "str"):
# not a key of the body.
_UNION_TAG = re.compile(r"^(?:[a-z][a-z0-9_-]*\[.*\]|str|int|float|bool|none|list|dict)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(parts: Sequence[str | int]) -> str:
    """A location in the body as a JSON path: `$`, `$.params[0]`, `$.params["a b"]`."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path += f".{part}"
        else:
            path += f"[{orjson.dumps(part).decode()}]"
    return path


def _location(loc: Sequence[str | int], sourced: bool) -> str:
    parts = list(loc)
    source = "body"
    if sourced and parts and parts[0] in _SOURCES:
        source = str(parts.pop(0))
    parts = [p for p in parts if not (isinstance(p, str) and _UNION_TAG.match(p))]
    if source == "body":
        return json_path(parts)
    return ".".join([source, *(str(p) for p in parts)])


def _message(err: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "json_invalid":
        # pydantic says where ("... at line 1 column 7"); FastAPI's own decoder gives the
        # character offset as the location's last part.
        reason = str(ctx.get("error") or err.get("msg", "")).removeprefix("Invalid JSON: ")
        offset = next((p for p in reversed(err.get("loc", ())) if isinstance(p, int)), None)
        return f"Invalid JSON: {reason}" + (f" at character {offset}" if offset else "")
    return _IN_JSON_TERMS.get(kind) or str(err.get("msg", "")).strip()


# pydantic speaks of Python's types where the same check of a body read by FastAPI (from a
# dict, not from JSON) fails; the client sent JSON.
_IN_JSON_TERMS = {
    "dict_type": "Input should be a JSON object",
    "model_type": "Input should be a JSON object",
    "model_attributes_type": "Input should be a JSON object",
    "list_type": "Input should be a valid array",
    "float_type": "Input should be a valid number",
}


def validation_problems(errors: Sequence[Any], *, sourced: bool = False) -> list[dict[str, str]]:
    """pydantic's (or FastAPI's, `sourced`: their locations start with body, query, ...)
    validation errors as `{"location", "message"}` items: the location a JSON path into the
    body, one item per location (a union's alternatives joined with "or")."""
    merged: dict[str, list[str]] = {}
    for err in errors:
        loc = err.get("loc", ())
        if err.get("type") == "json_invalid":
            loc = [p for p in loc if not isinstance(p, int)]
        location = _location(loc, sourced)
        message = _message(err)
        if message not in merged.setdefault(location, []):
            merged[location].append(message)
    return [
        {"location": location, "message": _join(messages)} for location, messages in merged.items()
    ]


def _join(messages: list[str]) -> str:
    prefix = "Input should be "
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m.removeprefix(prefix) for m in messages)
    return "; ".join(messages)


def validation_problem(
    scope: Scope | None, errors: Sequence[Any], *, sourced: bool = False
) -> Response:
    """400 `invalid-request` listing what is wrong with the request body or parameters, as
    `errors: [{"location": "$.params[0]", "message": ...}]` and a `detail` of
    `location: message` pairs (never the values sent, which may be secrets)."""
    problems = validation_problems(errors, sourced=sourced)
    return invalid_request(scope, problems)


def invalid_request(scope: Scope | None, problems: list[dict[str, str]]) -> Response:
    """400 `invalid-request` for `{"location", "message"}` items (validation_problems(), or a
    check of the body's own, such as a duplicate key at `json_path([...])`)."""
    summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems)
    return problem_response(
        scope, 400, "invalid-request", "The request is malformed", summary, errors=problems
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into problem+json."""

    async def on_mirrorpool_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, e.MirrorpoolError)
        return error_response(request.scope, exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(request.scope, exc.errors(), sourced=True)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, e.MirrorpoolError):
            # FastAPI wraps errors raised while it reads the body (our 413) in a 400.
            return error_response(request.scope, exc.__cause__)
        return problem_response(
            request.scope,
            exc.status_code,
            "http",
            str(exc.detail),
            str(exc.detail),
            dict(exc.headers) if exc.headers else None,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error in %s %s", request.method, request.url.path)
        return problem_response(
            request.scope, 500, "internal", "Internal error",
            "an unexpected error occurred; the service log has the details under this request id",
        )  # fmt: skip

    app.add_exception_handler(e.MirrorpoolError, on_mirrorpool_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


class ProblemHandlers(ExceptionMiddleware):
    """ASGI: what the app inside raises, answered by the handlers install() registers (the
    500 included), in one frame where Starlette's ExceptionMiddleware takes two and a
    request object for every request: every await of every request passes it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        # Where FastAPI's routes find the same handlers (starlette.routing.request_response).
        scope["starlette.exception_handlers"] = (self._exception_handlers, self._status_handlers)
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            handler = None
            if isinstance(exc, StarletteHTTPException):
                handler = self._status_handlers.get(exc.status_code)
            if handler is None:
                handler = next(
                    (self._exception_handlers[c] for c in type(exc).__mro__
                     if c in self._exception_handlers),
                    None,
                )  # fmt: skip
            if handler is None:
                raise
            if started:
                raise RuntimeError("an error after the answer had started") from exc
            response = await handler(StarletteRequest(scope, receive, send), exc)  # type: ignore[arg-type,misc]
            if response is not None:
                await response(scope, receive, sender)
            exc.__traceback__ = None  # an instance raised again keeps no old frames


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting problem+json answers: the Problem schema
    under application/problem+json, with an example each (app/api/examples.py)."""
    return {status: _problem_response(status) for status in statuses}


def _problem_response(status: int) -> dict[str, Any]:
    description, example = examples.PROBLEMS.get(status, ("A problem.", None))
    media: dict[str, Any] = {"schema": {"$ref": PROBLEM_REF}}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {PROBLEM_JSON: media}}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's OpenAPI document, saying what mirrorpool really answers to a malformed
    request (400 problem+json, not FastAPI's 422) and defining the Problem schema."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", _problem_response(400))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["Problem"] = Problem.model_json_schema()
    return schema
