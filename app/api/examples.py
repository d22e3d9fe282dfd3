"""Request examples for the OpenAPI document (each is validated against its model in tests)."""

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
    "dry_run": Example(
        summary="See what would run up to version 3", value={"target": 3, "dry_run": True}
    ),
}

NAMED: dict[str, Example] = {
    "run": Example(summary="Parameters by name", value={"params": {"email": "ada@example.com"}}),
}


def values(examples: dict[str, Example]) -> list[Any]:
    """The example payloads."""
    return [e["value"] for e in examples.values()]
