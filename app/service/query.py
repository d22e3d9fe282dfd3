"""Running SQL for a caller: one statement, a transaction, a stream's statement, a named
query. Each checks the key's scopes and the request's limits against the ceilings in
settings, binds its statements and hands them to the engine (`Engine.run`,
`Engine.transaction`, `Engine.stream`); the encoders turn what came back into the JSON of
the answer. The HTTP routes, their fast answer (app/api/fast_lane.py), named queries and
Neon's /sql all call these, so a request means the same whichever way it arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import orjson

from app.errors import Forbidden, InvalidSQL, LimitExceeded, MirrorpoolError
from app.service.bodies import Params, QueryRequest, StreamRequest, TransactionRequest
from app.service.keys import ApiKey, require
from app.settings import Settings
from app.sql.engine import Abort, Engine, Limits, Outcome
from app.sql.named import NamedQuery
from app.sql.off_loop import prepared
from app.sql.options import StatementRules
from app.sql.placeholders import BoundSQL
from app.sql.results import StatementResult
from app.sql.tree import NO_ROWS_TO_STREAM, returns_rows

RowFormat = Literal["array", "object"]


def limits_for(
    settings: Settings,
    key: ApiKey,
    *,
    timeout_ms: int | None,
    max_rows: int | None,
    read_only: bool,
    row_format: RowFormat,
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


def check_statement_count(count: int, settings: Settings, noun: str = "statements") -> None:
    """400 when a transaction has more statements than MIRRORPOOL_MAX_STATEMENTS."""
    if count > settings.max_statements:
        raise LimitExceeded(f"{count} {noun} were sent; the limit is {settings.max_statements}")


async def bind_all(
    statements: Iterable[tuple[str, Params]], rules: StatementRules, read_only: bool, key: str
) -> list[BoundSQL]:
    """A transaction's statements, bound; a failure names its `statement_index` (raised
    while `statements` reads a statement's parameters, too)."""
    bound: list[BoundSQL] = []
    try:
        for sql, params in statements:
            bound.append(await prepared(sql, params, rules, read_only=read_only, key=key))
    except MirrorpoolError as exc:
        exc.extra["statement_index"] = len(bound)
        raise
    return bound


async def run_query(
    body: QueryRequest, engine: Engine, settings: Settings, abort: Abort, key: ApiKey
) -> Outcome:
    """/v1/query: one statement, READ ONLY for a key that may only read."""
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
    bound = await prepared(
        body.sql, body.params, engine.rules, read_only=limits.read_only, key=limits.key
    )
    return await engine.run(bound, limits, abort)


async def run_transaction(
    body: TransactionRequest, engine: Engine, settings: Settings, abort: Abort, key: ApiKey
) -> Outcome:
    """/v1/transaction: the statements all-or-nothing, at the isolation asked for."""
    require(key, "read", "write")
    check_raw_sql(settings)
    check_statement_count(len(body.statements), settings)
    limits = limits_for(
        settings,
        key,
        timeout_ms=body.timeout_ms,
        max_rows=body.max_rows,
        read_only=body.read_only,
        row_format=body.row_format,
    )
    bound = await bind_all(
        ((s.sql, s.params) for s in body.statements), engine.rules, limits.read_only, limits.key
    )
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


async def stream_statement(
    body: StreamRequest, settings: Settings, key: ApiKey, rules: StatementRules
) -> tuple[BoundSQL, Limits]:
    """/v1/query/stream's statement and limits, checked before anything runs: 400 for a
    statement that returns no rows to stream."""
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
    bound = await prepared(body.sql, body.params, rules, read_only=limits.read_only, key=limits.key)
    if returns_rows(bound.tree) is False:
        raise InvalidSQL(NO_ROWS_TO_STREAM)
    return bound, limits


async def run_named(
    named: NamedQuery,
    params: dict[str, Any],
    *,
    timeout_ms: int | None,
    max_rows: int | None,
    row_format: RowFormat,
    engine: Engine,
    settings: Settings,
    abort: Abort,
    key: ApiKey,
) -> Outcome:
    """A named query (runs even when raw SQL is switched off): `read` for a read-only one,
    `write` for any other; its own timeout unless the request sets one."""
    require(key, "read" if named.read_only else "write")
    limits = limits_for(
        settings,
        key,
        timeout_ms=timeout_ms or named.timeout_ms,
        max_rows=max_rows,
        read_only=named.read_only,
        row_format=row_format,
    )
    bound = await prepared(
        named.sql, params, engine.rules, read_only=limits.read_only, key=limits.key
    )
    return await engine.run(bound, limits, abort)


def result_body(outcome: Outcome, max_bytes: int) -> bytes:
    """The JSON of a single-statement answer, rows cut to fit `max_bytes`."""
    payload = outcome.results[0].as_json()
    payload["node"] = outcome.node
    payload["from_mirror"] = outcome.from_mirror
    payload["duration_ms"] = outcome.duration_ms
    body = orjson.dumps(payload)
    if len(body) > max_bytes:
        body = _fit(payload, outcome.results[0], len(body), max_bytes)
    return body


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


def transaction_body(outcome: Outcome) -> bytes:
    """The JSON of a transaction's answer: one result per statement."""
    return orjson.dumps(
        {
            "results": [r.as_json() for r in outcome.results],
            "node": outcome.node,
            "duration_ms": outcome.duration_ms,
        }
    )
