"""Request examples for the OpenAPI document. Each is validated against its model, and
answers 2xx against the `make run` pair's demo tables (tests/test_quick_start.py)."""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example

QUERY: dict[str, Example] = {
    "positional": Example(
        summary="$1 placeholders, parameters as an array",
        value={"sql": "SELECT id, email FROM users WHERE id = $1", "params": [42]},
    ),
    "named": Example(
        summary=":name placeholders, parameters as an object",
        value={
            "sql": "SELECT id FROM users WHERE email = :email AND created_at > :since",
            "params": {"email": "ada@example.com", "since": "2024-01-01T00:00:00Z"},
            "row_format": "object",
        },
    ),
    "read_only": Example(
        summary="A read that a mirror may serve, with its own limits",
        value={
            "sql": "SELECT * FROM orders WHERE status = $1",
            "params": ["open"],
            "read_only": True,
            "timeout_ms": 2000,
            "max_rows": 500,
        },
    ),
}

STREAM: dict[str, Example] = {
    "export": Example(
        summary="Every row of a big table, as NDJSON",
        value={"sql": "SELECT * FROM events WHERE day = $1", "params": ["2024-05-01"]},
    ),
}

TRANSACTION: dict[str, Example] = {
    "transfer": Example(
        summary="Two updates that commit together",
        value={
            "statements": [
                {
                    "sql": "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                    "params": ["10.00", 1],
                },
                {
                    "sql": "UPDATE accounts SET balance = balance + :amount WHERE id = :id",
                    "params": {"amount": "10.00", "id": 2},
                },
            ],
            "isolation": "serializable",
        },
    ),
}

APPLY: dict[str, Example] = {
    "all": Example(summary="Apply every pending version", value={}),
    "dry_run": Example(summary="See what would run, running nothing", value={"dry_run": True}),
}

NAMED: dict[str, Example] = {
    "run": Example(summary="Parameters by name", value={"params": {"email": "ada@example.com"}}),
}


def values(examples: dict[str, Example]) -> list[Any]:
    """The example payloads."""
    return [e["value"] for e in examples.values()]


def _problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"urn:mirrorpool:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": "5f0c6a2e9d3b4f7a",
        **extra,
    }


# One example problem per status (README: Errors), shown under application/problem+json.
PROBLEMS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The request is malformed, or the statement is wrong.", _problem(
        400, "invalid-request", "The request is malformed",
        "$.parms: Extra inputs are not permitted",
        errors=[{"location": "$.parms", "message": "Extra inputs are not permitted"}],
    )),
    401: ("No key, or an unknown one.", _problem(
        401, "unauthorized", "Authentication required",
        "an API key is required (Authorization: Bearer <key>)",
    )),
    403: ("The key lacks the scope, or PostgreSQL refused the login's rights.", _problem(
        403, "forbidden", "Not allowed", "key 'reports' lacks the write scope for this request",
    )),
    404: ("Nothing by that name.", _problem(
        404, "not-found", "Not found", "no named query 'user_by_mail'; GET /v1/queries lists them",
    )),
    409: ("Conflicts with the current state or existing data.", _problem(
        409, "database-error", "The database rejected the statement",
        'duplicate key value violates unique constraint "users_pkey"', sqlstate="23505",
    )),
    413: ("The body is larger than MIRRORPOOL_MAX_BODY_BYTES.", _problem(
        413, "payload-too-large", "The request body is too large",
        "the request body is larger than 1048576 bytes",
    )),
    415: ("The body is not JSON.", _problem(
        415, "unsupported-media-type", "The request body must be JSON",
        "send the body as JSON with content-type: application/json",
    )),
    429: ("The key has MIRRORPOOL_MAX_INFLIGHT_PER_KEY requests in flight.", _problem(
        429, "too-many-requests", "Too many requests in flight",
        "key 'orders-svc' already has 64 requests in flight",
    )),
    503: ("No node can serve it now (a failover); retry after Retry-After. Or, as "
          "outcome-unknown (retryable false, no Retry-After): a write was sent and its "
          "connection was lost before its outcome came back.", _problem(
        503, "no-writer", "No writable database node is available",
        "no writable node is reachable; retry shortly", retryable=True,
    )),
    504: ("The statement passed its deadline.", _problem(
        504, "timeout", "The statement timed out",
        "canceling statement due to statement timeout", sqlstate="57014",
    )),
    507: ("The result is over the limits (POST /sql, whose protocol cannot say it was cut).",
          _problem(
        507, "result-too-large", "The result is over the limits",
        "the result has more than 10000 rows (MIRRORPOOL_MAX_ROWS)",
    )),
}  # fmt: skip
