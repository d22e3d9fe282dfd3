"""SQL over HTTP: /v1/query, /v1/query/stream and /v1/transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from app.api import examples
from app.api.auth import ApiKey, counted, require
from app.api.deps import EngineDep, SettingsDep
from app.api.disconnect import disconnected
from app.api.errors import error_response, problem_responses
from app.api.json_body import JsonRoute
from app.api.streaming import IdleLimitedStream
from app.errors import Forbidden, InvalidSQL, LimitExceeded, MirrorpoolError
from app.settings import Settings
from app.sql.columns import Column
from app.sql.engine import Abort, Engine, Limits, Outcome
from app.sql.results import StatementResult
from app.sql.statement import prepare
from app.sql.tree import NO_ROWS_TO_STREAM, returns_rows

router = APIRouter(tags=["query"], route_class=JsonRoute)

Params = list[Any] | dict[str, Any] | None
NODE_HEADER = "X-Mirrorpool-Node"

_SQL = Field(
    min_length=1,
    description="One statement. `$1`, `$2`, ... take `params` as an array; `:name` as an object.",
    examples=["SELECT id, email FROM users WHERE id = $1"],
)
_PARAMS = Field(
    None,
    description="Array for `$n` placeholders, object for `:name` ones. JSON null, bool, number "
    "and string bind as such (a string is cast by PostgreSQL to the type it is compared with); "
    "an object binds as jsonb; an array of scalars as a PostgreSQL array.",
    examples=[[42]],
)
_TIMEOUT = Field(None, ge=1, description="statement_timeout in ms (default and ceiling: settings).")
_READ_ONLY = Field(False, description="Run in a READ ONLY transaction; may be served by a mirror.")
_ROW_FORMAT_DOC = "`array`: rows as arrays; `object`: keyed by column."


class QueryRequest(BaseModel):
    """One statement with its parameters and limits."""

    model_config = ConfigDict(extra="forbid")

    sql: str = _SQL
    params: Params = _PARAMS
    read_only: bool = _READ_ONLY
    timeout_ms: int | None = _TIMEOUT
    max_rows: int | None = Field(
        None, ge=0, description="Rows returned at most (default: settings)."
    )
    row_format: Literal["array", "object"] = Field("array", description=_ROW_FORMAT_DOC)


class StreamRequest(BaseModel):
    """One statement whose rows are streamed as NDJSON."""

    model_config = ConfigDict(extra="forbid")

    sql: str = _SQL
    params: Params = _PARAMS
    read_only: bool = _READ_ONLY
    timeout_ms: int | None = _TIMEOUT
    row_format: Literal["array", "object"] = Field("array", description=_ROW_FORMAT_DOC)


class Statement(BaseModel):
    """One statement of a transaction."""

    model_config = ConfigDict(extra="forbid")

    sql: str = _SQL
    params: Params = _PARAMS


class TransactionRequest(BaseModel):
    """Statements run all-or-nothing."""

    model_config = ConfigDict(extra="forbid")

    statements: list[Statement] = Field(min_length=1)
    isolation: Literal["read_committed", "repeatable_read", "serializable"] = "read_committed"
    read_only: bool = False
    deferrable: bool = Field(
        False,
        description="DEFERRABLE: with serializable and read_only, wait for a snapshot that "
        "cannot fail, then run without serialization checks (PostgreSQL ignores it otherwise).",
    )
    timeout_ms: int | None = _TIMEOUT
    max_rows: int | None = Field(None, ge=0, description="Rows per statement at most.")
    row_format: Literal["array", "object"] = Field("array", description=_ROW_FORMAT_DOC)


class ColumnOut(BaseModel):
    """A result column."""

    name: str = Field(examples=["id"])
    type: str = Field(description="PostgreSQL type name; arrays end in [].", examples=["int8"])
    type_oid: int = Field(examples=[20])


class ResultOut(BaseModel):
    """What one statement returned."""

    columns: list[ColumnOut]
    rows: list[Any] = Field(description="Arrays (or objects with row_format=object).")
    row_count: int = Field(description="Rows in `rows`.")
    rows_affected: int | None = Field(description="Rows inserted/updated/deleted, for DML.")
    command: str | None = Field(description="The command tag.", examples=["INSERT 0 1"])
    truncated: bool = Field(description="true when max_rows or the size cap cut the rows.")


class QueryResponse(ResultOut):
    """The result of /v1/query."""

    node: str = Field(description="The node that served the request.", examples=["primary"])
    from_mirror: bool = Field(
        False,
        description="True when a node that was not the writer answered: a read_only request "
        "sent to a mirror, or a pure read served while no node takes writes.",
    )
    duration_ms: float


class TransactionResponse(BaseModel):
    """The results of /v1/transaction, one per statement."""

    results: list[ResultOut]
    node: str
    duration_ms: float


def limits_for(
    settings: Settings,
    key: ApiKey,
    *,
    timeout_ms: int | None,
    max_rows: int | None,
    read_only: bool,
    row_format: Literal["array", "object"],
) -> Limits:
    """The request's limits, its own values checked against the ceilings in settings; a key
    without the write scope always reads only, a key with a role runs as that role."""
    timeout = timeout_ms or settings.statement_timeout_ms
    if timeout > settings.max_statement_timeout_ms:
        raise LimitExceeded(
            f"timeout_ms {timeout} is above the ceiling of {settings.max_statement_timeout_ms}"
        )
    rows = settings.max_rows if max_rows is None else max_rows
    if rows > settings.max_rows_ceiling:
        raise LimitExceeded(f"max_rows {rows} is above the ceiling of {settings.max_rows_ceiling}")
    return Limits(timeout, rows, read_only or not key.can("write"), row_format, key.role, key.id)


def check_raw_sql(settings: Settings) -> None:
    """403 when raw SQL is switched off."""
    if not settings.allow_raw_sql:
        raise Forbidden(
            "raw SQL is switched off here (MIRRORPOOL_ALLOW_RAW_SQL=false); use /v1/queries"
        )


def result_body(outcome: Outcome, max_bytes: int) -> bytes:
    """The JSON body of a single-statement answer, rows cut to fit `max_bytes`."""
    payload = outcome.results[0].as_json()
    payload["node"] = outcome.node
    payload["from_mirror"] = outcome.from_mirror
    payload["duration_ms"] = outcome.duration_ms
    body = orjson.dumps(payload)
    if len(body) > max_bytes:
        body = _fit(payload, outcome.results[0], len(body), max_bytes)
    return body


def result_response(outcome: Outcome, max_bytes: int) -> Response:
    """The JSON answer of a single-statement request, rows cut to fit `max_bytes`."""
    return Response(
        result_body(outcome, max_bytes),
        media_type="application/json",
        headers={NODE_HEADER: outcome.node},
    )


def _fit(payload: dict[str, Any], result: StatementResult, size: int, max_bytes: int) -> bytes:
    """Drop trailing rows until the encoded answer fits, and say it was truncated."""
    rows = payload["rows"]
    sizes = [len(orjson.dumps(row)) + 1 for row in rows]
    excess = size - max_bytes
    keep = len(rows)
    while keep and excess > 0:
        keep -= 1
        excess -= sizes[keep]
    payload["rows"] = rows[:keep]
    payload["row_count"] = keep
    payload["truncated"] = True
    return orjson.dumps(payload)


@router.post(
    "/v1/query",
    summary="Run one statement",
    response_model=QueryResponse,
    responses=problem_responses(400, 401, 403, 409, 413, 429, 503, 504),
)
async def query(
    body: Annotated[QueryRequest, Body(openapi_examples=examples.QUERY)],
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    key: Annotated[ApiKey, Depends(counted)],
) -> Response:
    """Run one parameterised statement on the writer (or, when read_only, on any reader).

    Needs the `read` scope (the statement then runs READ ONLY, enforced by PostgreSQL) or
    `write`.
    """
    outcome = await run_query(body, engine, settings, partial(disconnected, request), key)
    return result_response(outcome, settings.max_response_bytes)


async def run_query(
    body: QueryRequest, engine: Engine, settings: Settings, abort: Abort, key: ApiKey
) -> Outcome:
    """/v1/query, whichever way the request arrived (app/api/fast_lane.py or FastAPI)."""
    require(key, "read", "write")
    check_raw_sql(settings)
    limits = limits_for(
        settings,
        key,
        timeout_ms=body.timeout_ms,
        max_rows=body.max_rows,
        read_only=body.read_only,
        row_format=body.row_format,
    )
    bound = prepare(body.sql, body.params, engine.rules, read_only=limits.read_only)
    return await engine.run(bound, limits, abort)


@router.post(
    "/v1/transaction",
    summary="Run statements in one transaction",
    response_model=TransactionResponse,
    responses=problem_responses(400, 401, 403, 409, 413, 429, 503, 504),
)
async def transaction(
    body: Annotated[TransactionRequest, Body(openapi_examples=examples.TRANSACTION)],
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    key: Annotated[ApiKey, Depends(counted)],
) -> Response:
    """All statements commit together or none does; a failure names its `statement_index`.

    Serialization failures and deadlocks (40001, 40P01) answer 409 with `retryable: true`.
    """
    outcome = await run_transaction(body, engine, settings, partial(disconnected, request), key)
    return Response(
        transaction_body(outcome),
        media_type="application/json",
        headers={NODE_HEADER: outcome.node},
    )


async def run_transaction(
    body: TransactionRequest, engine: Engine, settings: Settings, abort: Abort, key: ApiKey
) -> Outcome:
    """/v1/transaction, whichever way the request arrived (app/api/fast_lane.py or FastAPI)."""
    require(key, "read", "write")
    check_raw_sql(settings)
    if len(body.statements) > settings.max_statements:
        raise LimitExceeded(
            f"{len(body.statements)} statements were sent; the limit is {settings.max_statements}"
        )
    limits = limits_for(
        settings,
        key,
        timeout_ms=body.timeout_ms,
        max_rows=body.max_rows,
        read_only=body.read_only,
        row_format=body.row_format,
    )
    bound = []
    for index, statement in enumerate(body.statements):
        try:
            bound.append(
                prepare(
                    statement.sql,
                    statement.params,
                    engine.rules,
                    read_only=limits.read_only,
                )
            )
        except MirrorpoolError as exc:
            exc.extra["statement_index"] = index
            raise
    return await engine.transaction(
        bound,
        isolation=body.isolation,
        read_only=limits.read_only,
        role=limits.role,
        timeout_ms=limits.timeout_ms,
        max_rows=limits.max_rows,
        row_format=body.row_format,
        abort=abort,
        key=limits.key,
        deferrable=body.deferrable,
    )


def transaction_body(outcome: Outcome) -> bytes:
    """The JSON body of a transaction's answer: one result per statement."""
    return orjson.dumps(
        {
            "results": [r.as_json() for r in outcome.results],
            "node": outcome.node,
            "duration_ms": outcome.duration_ms,
        }
    )


@router.post(
    "/v1/query/stream",
    summary="Stream the rows of one statement as NDJSON",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": 'Line 1: {"columns": [...]}; then one JSON array (or object) per '
            'row; last line: {"row_count": n, "command": "...", "status": "ok"}, or '
            '{"status": "error", "error": {problem}} when the statement fails mid-stream.',
        },
        **problem_responses(400, 401, 403, 409, 413, 429, 503, 504),
    },
)
async def query_stream(
    body: Annotated[StreamRequest, Body(openapi_examples=examples.STREAM)],
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    key: Annotated[ApiKey, Depends(counted)],
) -> Response:
    """Rows come from the server in chunks, so memory stays flat whatever the result size."""
    require(key, "read", "write")
    check_raw_sql(settings)
    limits = limits_for(
        settings,
        key,
        timeout_ms=body.timeout_ms,
        max_rows=None,
        read_only=body.read_only,
        row_format=body.row_format,
    )
    bound = prepare(body.sql, body.params, engine.rules, read_only=limits.read_only)
    if returns_rows(bound.tree) is False:
        raise InvalidSQL(NO_ROWS_TO_STREAM)
    events = engine.stream(bound, limits, settings.stream_chunk_rows)
    # The node and the columns come before the answer starts, so an error up to that point
    # is an ordinary problem+json answer with its own status.

    async def head() -> tuple[str, list[Column]]:
        _, node = await anext(events)
        _, columns = await anext(events)
        return node, columns

    try:
        node, columns = await engine.with_deadline(
            head(), limits.timeout_ms, partial(disconnected, request)
        )
    except BaseException:
        # Given up on: the task still inside the stream is being cancelled, and closes it.
        if not getattr(events, "ag_running", False):
            await events.aclose()
        raise
    names = [c.name for c in columns]

    async def lines() -> AsyncIterator[bytes]:
        yield orjson.dumps({"columns": [c.as_json() for c in columns]}) + b"\n"
        count = 0
        try:
            async for kind, payload in events:
                if kind == "rows":
                    assert isinstance(payload, list)
                    count += len(payload)
                    rows = payload
                    if body.row_format == "object":
                        rows = [dict(zip(names, row, strict=True)) for row in payload]
                    yield b"\n".join(orjson.dumps(row) for row in rows) + b"\n"
                elif kind == "end":
                    assert isinstance(payload, StatementResult)
                    tail = {"row_count": count, "command": payload.command, "status": "ok"}
                    yield orjson.dumps(tail) + b"\n"
        except MirrorpoolError as exc:
            problem = orjson.loads(bytes(error_response(request.scope, exc).body))
            yield orjson.dumps({"row_count": count, "status": "error", "error": problem}) + b"\n"
        finally:
            await events.aclose()

    return IdleLimitedStream(
        lines(),
        settings.stream_idle_timeout_s,
        media_type="application/x-ndjson",
        headers={NODE_HEADER: node},
    )
