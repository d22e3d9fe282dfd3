"""SQL over HTTP: /v1/query, /v1/query/stream and /v1/transaction (the work is the service
layer's, app/service/query.py; /v1/query and /v1/transaction also have a fast answer inside the
same middleware stack, app/api/fast_lane.py, which gives the same answers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

import orjson
from fastapi import APIRouter, Body, Depends, Request
from starlette.responses import Response, StreamingResponse

from app.api import examples
from app.api.answers import NODE_HEADER, json_response
from app.api.auth import counted
from app.api.deps import EngineDep, SettingsDep
from app.api.disconnect import disconnected
from app.api.errors import error_response, problem_responses
from app.api.json_body import JsonRoute
from app.api.streaming import IdleLimitedStream
from app.errors import MirrorpoolError
from app.service.bodies import (
    QueryRequest,
    QueryResponse,
    StreamRequest,
    TransactionRequest,
    TransactionResponse,
)
from app.service.keys import ApiKey
from app.service.query import (
    result_body,
    run_query,
    run_transaction,
    stream_statement,
    transaction_body,
)
from app.sql.columns import Column
from app.sql.results import StatementResult

router = APIRouter(tags=["query"], route_class=JsonRoute)


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
    return json_response(result_body(outcome, settings.max_response_bytes), outcome.node)


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
    return json_response(transaction_body(outcome), outcome.node)


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
    bound, limits = await stream_statement(body, settings, key, engine.rules)
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
