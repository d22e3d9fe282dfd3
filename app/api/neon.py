"""POST /sql: Neon's SQL-over-HTTP protocol, for `@neondatabase/serverless` and the ORMs built
on it (drizzle-orm's neon-http, Prisma's PrismaNeonHttp, @vercel/postgres).

A thin adapter over the same service functions as /v1/query and /v1/transaction: the same
keys and scopes, limits, routing, failover, read retries, deadlines, cancellation and
metrics. What differs is the wire format:

- The body is JSON sent as text/plain: `{"query", "params"}`, or `{"queries": [...]}` for a
  transaction, whose mode comes in the `Neon-Batch-Isolation-Level`, `Neon-Batch-Read-Only`
  and `Neon-Batch-Deferrable` headers. Parameters are text (node-postgres already turned
  dates, arrays and buffers into PostgreSQL's input forms) or null, sent untyped.
- The key comes as `Authorization: Bearer` (the driver's `authToken`) or as the password of
  the `Neon-Connection-String` URL. That header is a secret: it is read here and nowhere
  else, and never logged, echoed or counted.
- Values are answered as PostgreSQL's own text output under its default styles
  (app/sql/text_output.py), with libpq's field descriptions; the driver parses them by type.
- A database error is a 400 with PostgreSQL's fields under node-postgres' names (the driver
  reads the body of a 400 only); mirrorpool's own errors keep their status and problem+json
  body, with a `message` added. A result over the row or size limit fails with 507, as
  Neon's does, instead of arriving cut.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope

from app.api.answers import json_response
from app.api.auth import NEON_PATH, Keyring, caller_of
from app.api.body_limit import read_body
from app.api.deps import EngineDep, SettingsDep
from app.api.disconnect import client_gone
from app.api.errors import error_response, problem_responses, validation_problem
from app.api.json_body import check_unique_keys
from app.errors import (
    DatabaseError,
    InvalidParameters,
    MirrorpoolError,
    RequestError,
    ResultTooLarge,
)
from app.service.keys import ApiKey, require
from app.service.query import bind_all, check_raw_sql, check_statement_count, limits_for
from app.settings import Settings
from app.sql.engine import Abort, Engine, Outcome
from app.sql.off_loop import prepared
from app.sql.results import RowFormat, StatementResult
from app.sql.session import Isolation

router = APIRouter(tags=["neon"])

PATH = NEON_PATH  # (app/api/auth.py reads its key there)

_ISOLATION: dict[str, Isolation] = {
    "Serializable": "serializable",
    "RepeatableRead": "repeatable_read",
    "ReadCommitted": "read_committed",
    # PostgreSQL runs READ UNCOMMITTED as READ COMMITTED.
    "ReadUncommitted": "read_committed",
}
# node-postgres' DatabaseError fields, from mirrorpool's names of PostgreSQL's diagnostics.
_ERROR_FIELDS = {
    "detail": "detail",
    "hint": "hint",
    "position": "position",
    "internalPosition": "internal_position",
    "internalQuery": "internal_query",
    "severity": "severity",
    "where": "where",
    "table": "table",
    "column": "column",
    "schema": "schema",
    "dataType": "datatype",
    "constraint": "constraint",
}


class NeonQuery(BaseModel):
    """One statement, as the driver sends it."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1, examples=["SELECT * FROM users WHERE id = $1"])
    params: list[Any] = Field(
        default_factory=list,
        description="Values for $1, $2, ...: strings (PostgreSQL's input text) or null.",
        examples=[["42"]],
    )
    arrayMode: bool | None = Field(None, description="Rows as arrays (default: the header).")


class NeonBatch(BaseModel):
    """Statements run as one transaction."""

    model_config = ConfigDict(extra="ignore")

    queries: list[NeonQuery] = Field(min_length=1)


_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "text/plain": {
                # JSON sent as text, as the driver sends it: {"query", "params"}, or
                # {"queries": [...]} for a batch.
                "schema": {"type": "string", "format": "json"},
                "example": '{"query": "SELECT $1::int + 1 AS n", "params": ["41"]}',
            }
        },
    },
    "parameters": [
        {"name": "Neon-Connection-String", "in": "header", "schema": {"type": "string"},
         "description": "postgresql://<any user>:<API key>@<host>/<any database>; the key "
         "may come as Authorization: Bearer instead. A secret."},
        {"name": "Neon-Array-Mode", "in": "header", "schema": {"type": "string"},
         "description": "`true`: rows as arrays (what the driver sends)."},
        {"name": "Neon-Batch-Isolation-Level", "in": "header", "schema": {
            "enum": list(_ISOLATION)}},
        {"name": "Neon-Batch-Read-Only", "in": "header", "schema": {"enum": ["true", "false"]}},
        {"name": "Neon-Batch-Deferrable", "in": "header", "schema": {"enum": ["true", "false"]}},
    ],
}  # fmt: skip


@router.post(
    PATH,
    summary="Neon's SQL-over-HTTP protocol",
    response_class=Response,
    openapi_extra=_OPENAPI,
    responses={
        200: {"content": {"application/json": {}}, "description": "A result, or `results`."},
        **problem_responses(401, 403, 413, 429, 503, 504, 507),
        400: {
            **problem_responses(400)[400],
            "content": {
                "application/json": {"schema": {"type": "object"}},
                **problem_responses(400)[400]["content"],
            },
            "description": "A database error, with PostgreSQL's fields under node-postgres' "
            "names (application/json, as Neon answers); or a malformed request "
            "(problem+json with a `message`).",
        },
    },
)
async def sql_over_http(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """What `@neondatabase/serverless` sends with `neonConfig.fetchEndpoint` pointed here.

    Needs the `read` scope (statements then run READ ONLY) or `write`.
    """
    keyring: Keyring = request.app.state.keyring
    return await answer(request.scope, request.receive, engine, settings, keyring)


async def answer(
    scope: Scope, receive: Receive, engine: Engine, settings: Settings, keyring: Keyring
) -> Response:
    """The answer to one POST /sql, from its route or as the fast answer (app/main.py)."""
    try:
        # The key as a bearer token (the driver's authToken), else as the connection
        # string's password (app/api/auth.py presented_key); counted by the gate.
        key = caller_of(scope, keyring)
        require(key, "read", "write")
        check_raw_sql(settings)
        array_mode = _flag(scope, b"neon-array-mode") is True  # a bad header: before it runs
        body = _parse(await read_body(receive))
        outcome = await _run(
            body, scope, engine, settings, key, partial(client_gone, receive), array_mode
        )
        encoded = _encode(outcome, body, array_mode, settings)
    except ValidationError as exc:
        return _with_message(validation_problem(scope, exc.errors(include_input=False)))
    except MirrorpoolError as exc:
        return error(scope, exc)
    return json_response(encoded, outcome.node)


def _flag(scope: Scope, header: bytes) -> bool | None:
    """A `true` / `false` header (None when absent); 400 for anything else."""
    value = next((v for k, v in scope["headers"] if k == header), None)
    if value is None:
        return None
    text: str = value.decode("latin-1").strip().lower()
    if text not in ("true", "false"):
        raise RequestError(f"the {header.decode()} header must be true or false")
    return text == "true"


def _isolation(scope: Scope) -> Isolation:
    value = next((v for k, v in scope["headers"] if k == b"neon-batch-isolation-level"), None)
    if value is None:
        return "read_committed"
    isolation = _ISOLATION.get(value.decode("latin-1").strip())
    if isolation is None:
        raise RequestError("Neon-Batch-Isolation-Level must be one of " + ", ".join(_ISOLATION))
    return isolation


def _parse(body: bytes) -> NeonQuery | NeonBatch:
    """The body's one query or batch (JSON, whatever its content type says)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RequestError("the body is not JSON: send {query, params} or {queries}") from None
    check_unique_keys(body)  # what a gateway in front read is what runs
    if isinstance(data, dict) and "queries" in data:
        return NeonBatch.model_validate(data)
    return NeonQuery.model_validate(data)


def _params(query: NeonQuery) -> list[str | None]:
    """The parameters as PostgreSQL input text, as Neon's proxy reads them."""
    values: list[str | None] = []
    for value in query.params:
        if value is None or isinstance(value, str):
            values.append(value)
        elif isinstance(value, bool):
            values.append("true" if value else "false")
        elif isinstance(value, int | float | dict):  # a number's or an object's JSON text
            try:
                values.append(orjson.dumps(value).decode())
            except orjson.JSONEncodeError:
                raise InvalidParameters(
                    "a parameter nests too deeply, or holds a number JSON cannot carry"
                ) from None
        else:
            raise InvalidParameters(
                "a parameter is a JSON array: send it as PostgreSQL's array text ('{1,2}')"
            )
    return values


async def _run(
    body: NeonQuery | NeonBatch,
    scope: Scope,
    engine: Engine,
    settings: Settings,
    key: ApiKey,
    abort: Abort,
    array_mode: bool,
) -> Outcome:
    # Rows sent as objects repeat their columns' names: the size check before a write's
    # COMMIT counts them so (a 507 then means nothing was written).
    queries = [body] if isinstance(body, NeonQuery) else body.queries
    row_format: RowFormat = "array" if all(_mode(q, array_mode) for q in queries) else "object"
    if isinstance(body, NeonQuery):
        limits = limits_for(
            settings, key, timeout_ms=None, max_rows=None, read_only=False, row_format=row_format
        )
        bound = await prepared(
            body.query, _params(body), engine.rules, read_only=limits.read_only, key=limits.key
        )
        # A query the tree proves a pure read is served and retried as /v1/query's are: by a
        # mirror while no node takes writes, on another node when its own fails mid-flight,
        # and through its key's lanes once it is known to be quick (app/sql/engine.py).
        limits = dataclasses.replace(limits, text_output=True)
        return await engine.run(bound, limits, abort)
    read_only = _flag(scope, b"neon-batch-read-only") is True
    deferrable = _flag(scope, b"neon-batch-deferrable") is True
    isolation = _isolation(scope)
    check_statement_count(len(body.queries), settings, "queries")
    limits = limits_for(
        settings, key, timeout_ms=None, max_rows=None, read_only=read_only, row_format=row_format
    )
    texts = ((query.query, _params(query)) for query in body.queries)
    statements = await bind_all(texts, engine.rules, limits.read_only, limits.key)
    return await engine.transaction(
        statements,
        isolation=isolation,
        read_only=limits.read_only,
        role=limits.role,
        timeout_ms=limits.timeout_ms,
        max_rows=limits.max_rows,
        row_format=row_format,
        abort=abort,
        key=limits.key,
        deferrable=deferrable,
        text_output=True,
    )


def _encode(
    outcome: Outcome, body: NeonQuery | NeonBatch, array_mode: bool, settings: Settings
) -> bytes:
    """The answer's JSON; 507 when a result was cut or the answer is over the size limit."""
    if isinstance(body, NeonQuery):
        payload: dict[str, Any] = _result(outcome.results[0], _mode(body, array_mode), settings)
    else:
        payload = {
            "results": [
                _result(result, _mode(query, array_mode), settings)
                for result, query in zip(outcome.results, body.queries, strict=True)
            ]
        }
    answer = orjson.dumps(payload)
    if len(answer) > settings.max_response_bytes:
        raise ResultTooLarge(
            f"the answer is {len(answer)} bytes, over the limit of {settings.max_response_bytes}"
            " (MIRRORPOOL_MAX_RESPONSE_BYTES); select fewer rows or columns"
        )
    return answer


def _mode(query: NeonQuery, array_mode: bool) -> bool:
    return array_mode if query.arrayMode is None else query.arrayMode


def _result(result: StatementResult, array_mode: bool, settings: Settings) -> dict[str, Any]:
    """One result in Neon's form: the first word of the tag, its count, libpq's fields."""
    if result.truncated:
        raise ResultTooLarge(
            f"the result has more than {settings.max_rows} rows (MIRRORPOOL_MAX_ROWS); "
            "select fewer with LIMIT"
        )
    fields = result.fields or []
    rows = result.rows
    if not array_mode:
        names = [f.name for f in fields]
        rows = [dict(zip(names, row, strict=True)) for row in rows]
    words = (result.command or "").split()
    return {
        "command": words[0] if words else "",
        "rowCount": int(words[-1]) if len(words) > 1 and words[-1].isdigit() else None,
        "rowAsArray": array_mode,
        "fields": [
            {
                "name": f.name,
                "dataTypeID": f.type_oid,
                "tableID": f.table_oid,
                "columnID": f.column_number,
                "dataTypeSize": f.size,
                "dataTypeModifier": f.modifier,
                "format": "text",
            }
            for f in fields
        ],
        "rows": rows,
    }


def error(scope: Scope, exc: MirrorpoolError) -> Response:
    """The answer for a failure: a database error as node-postgres' fields with status 400
    (the only status whose body the driver reads); anything else as its problem+json with a
    `message` the driver shows."""
    problem = error_response(scope, exc)  # counted in /metrics, sqlstate for the access log
    if not isinstance(exc, DatabaseError):
        return _with_message(problem)
    database: dict[str, Any] = exc.extra.get("database") or {}
    fields: dict[str, Any] = {
        "message": database.get("message", exc.detail),
        "code": exc.sqlstate,
    }
    for name, ours in _ERROR_FIELDS.items():
        value = database.get(ours)
        fields[name] = str(value) if isinstance(value, int) else value
    fields.update(file=None, line=None, routine=None)
    if "statement_index" in exc.extra:
        fields["statementIndex"] = exc.extra["statement_index"]
    return Response(orjson.dumps(fields), status_code=400, media_type="application/json")


def _with_message(problem: Response) -> Response:
    body = orjson.loads(bytes(problem.body))
    body["message"] = body.get("detail")
    headers = {
        k: v for k, v in problem.headers.items() if k not in ("content-length", "content-type")
    }
    return Response(
        orjson.dumps(body),
        status_code=problem.status_code,
        headers=headers,
        media_type=problem.media_type,
    )
