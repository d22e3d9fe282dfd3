"""Named queries over HTTP: GET /v1/queries lists them, POST /v1/queries/{name} runs one."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from app.api import examples
from app.api.answers import json_response
from app.api.auth import counted, scoped
from app.api.deps import EngineDep, SettingsDep
from app.api.disconnect import disconnected
from app.api.errors import problem_responses
from app.api.json_body import JsonRoute
from app.errors import NotFound
from app.service.bodies import QueryResponse
from app.service.keys import ApiKey, require
from app.service.query import result_body, run_named
from app.sql.named import NamedQuery

router = APIRouter(tags=["query"], route_class=JsonRoute)


async def get_queries(request: Request) -> dict[str, NamedQuery]:
    """The named queries loaded at start-up."""
    queries: dict[str, NamedQuery] = request.app.state.queries
    return queries


QueriesDep = Annotated[dict[str, NamedQuery], Depends(get_queries)]


class NamedQueryOut(BaseModel):
    """A named query as listed."""

    name: str = Field(examples=["user_by_email"])
    description: str
    params: list[str] = Field(description="Its `:name` parameters.", examples=[["email"]])
    read_only: bool
    sql: str


class NamedQueryList(BaseModel):
    """Every named query."""

    queries: list[NamedQueryOut]


class RunNamedQuery(BaseModel):
    """Parameters and limits for one run of a named query."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict, examples=[{"email": "a@example.com"}])
    timeout_ms: int | None = Field(None, ge=1)
    max_rows: int | None = Field(None, ge=0)
    row_format: Literal["array", "object"] = "array"


@router.get("/v1/queries", summary="List named queries", responses=problem_responses(401, 403))
async def list_queries(
    queries: QueriesDep, _key: Annotated[ApiKey, Depends(scoped("read"))]
) -> NamedQueryList:
    """The allowlisted queries loaded from MIRRORPOOL_QUERIES_DIR, with their parameters."""
    return NamedQueryList(
        queries=[
            NamedQueryOut(
                name=q.name,
                description=q.description,
                params=list(q.params),
                read_only=q.read_only,
                sql=q.sql,
            )
            for q in queries.values()
        ]
    )


@router.post(
    "/v1/queries/{name}",
    summary="Run a named query",
    response_model=QueryResponse,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 429, 503, 504),
)
async def run_query(
    name: Annotated[str, PathParam(examples=["user_by_email"])],
    request: Request,
    queries: QueriesDep,
    engine: EngineDep,
    settings: SettingsDep,
    key: Annotated[ApiKey, Depends(counted)],
    body: Annotated[RunNamedQuery | None, Body(openapi_examples=examples.NAMED)] = None,
) -> Response:
    """Runs even when raw SQL is switched off; read-only queries may be served by a mirror.
    Needs `read` for a read-only query, `write` for any other."""
    require(key, "read", "write")
    named = queries.get(name)
    if named is None:
        raise NotFound(f"no named query {name!r}; GET /v1/queries lists them")
    body = body or RunNamedQuery()
    outcome = await run_named(
        named,
        body.params,
        timeout_ms=body.timeout_ms,
        max_rows=body.max_rows,
        row_format=body.row_format,
        engine=engine,
        settings=settings,
        abort=partial(disconnected, request),
        key=key,
    )
    return json_response(result_body(outcome, settings.max_response_bytes), outcome.node)
