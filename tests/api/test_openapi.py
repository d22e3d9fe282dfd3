"""The OpenAPI document teaches: every operation summarised, tagged, its failures described,
and every request example accepted by the model it illustrates."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.api import examples
from app.api.errors import Problem
from app.api.migrations import ApplyIn
from app.api.named import RunNamedQuery
from app.devdb import LocalPair
from app.service.bodies import QueryRequest, StreamRequest, TransactionRequest
from tests.conftest import serving, settings_for

OPEN = {"/health", "/health/live", "/health/ready", "/metrics"}


async def spec(pair: LocalPair) -> dict[str, Any]:
    async with serving(settings_for(pair)) as (_, client):
        document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


async def test_every_operation_is_summarised_tagged_and_documents_its_failures(
    pair: LocalPair,
) -> None:
    document = await spec(pair)
    assert "Problem" in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), where
            assert op.get("description"), where
            assert op.get("tags"), where
            assert "200" in op["responses"], where
            if path not in OPEN:
                problems = [s for s in op["responses"] if s.startswith(("4", "5"))]
                assert problems, where
                for status in problems:
                    content = op["responses"][status].get("content", {})
                    # Neon's protocol answers a database error as its own JSON, with 400.
                    neon = (
                        {"application/json"} if (where, status) == ("POST /sql", "400") else set()
                    )
                    assert set(content) - neon == {"application/problem+json"}, (where, status)
                    media = content["application/problem+json"]
                    assert media["schema"] == {"$ref": "#/components/schemas/Problem"}, where
                    example = Problem.model_validate(media["example"])
                    assert example.status == int(status), (where, status)
                    assert example.type.startswith("urn:mirrorpool:problem:"), where


async def test_request_examples_are_shown_and_valid(pair: LocalPair) -> None:
    document = await spec(pair)
    shown: dict[tuple[str, str], tuple[dict[str, Any], type[BaseModel]]] = {
        ("post", "/v1/query"): (examples.QUERY, QueryRequest),
        ("post", "/v1/query/stream"): (examples.STREAM, StreamRequest),
        ("post", "/v1/transaction"): (examples.TRANSACTION, TransactionRequest),
        ("post", "/v1/migrations/apply"): (examples.APPLY, ApplyIn),
        ("post", "/v1/queries/{name}"): (examples.NAMED, RunNamedQuery),
    }
    for (method, path), (given, model) in shown.items():
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert set(body["examples"]) == set(given), path
        for name, example in body["examples"].items():
            validated: BaseModel = model.model_validate(example["value"])
            assert validated is not None, (path, name)
    tags = {tag for ops in document["paths"].values() for op in ops.values() for tag in op["tags"]}
    assert {"query", "migrations", "probes", "admin"} <= tags
    assert "HTTPBearer" in document["components"]["securitySchemes"]
