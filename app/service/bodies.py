"""The bodies of the SQL requests and their answers (/v1/query, /v1/query/stream,
/v1/transaction, named queries): what a caller sends and gets back, as the OpenAPI
document describes it and as the routes and their fast answer validate it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Params = list[Any] | dict[str, Any] | None

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
