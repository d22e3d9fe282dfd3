"""The fast answers and the FastAPI routes give the same answer to the same request: status,
the headers a client reads, and the body (problem+json and validation errors included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from app.api.auth import hash_key
from app.api.fast_lane import JsonEndpoint, route_at
from app.devdb import LocalPair
from app.main import MirrorpoolApp, create_app
from app.service.bodies import QueryRequest
from app.service.query import transaction_body
from tests.conftest import serving_ready, settings_for

WRITER = "paths-writer-key-0123456789"
READER = "paths-reader-key-0123456789"
KEYS = [
    {"id": "writer", "sha256": hash_key(WRITER), "scopes": ["write"]},
    {"id": "reader", "sha256": hash_key(READER), "scopes": ["read"]},
]
MAX_BODY = 4096
# Headers a client acts on; the others (date, server) are the server's, not the app's.
HEADERS = (
    "content-type",
    "x-request-id",
    "x-mirrorpool-node",
    "www-authenticate",
    "retry-after",
    "connection",
)


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    """A body sent without Content-Length (chunked), in two parts."""
    yield body[: len(body) // 2]
    yield body[len(body) // 2 :]


def json_body(value: Any) -> bytes:
    return orjson.dumps(value)


# (name, path, key, body, extra headers): what the two ways must answer alike.
REQUESTS: list[tuple[str, str, str | None, bytes | None, dict[str, str]]] = [
    (
        "ok",
        "/v1/query",
        WRITER,
        json_body({"sql": "SELECT $1::int8 AS n, 'x' AS s", "params": [42]}),
        {},
    ),
    (
        "ok, objects",
        "/v1/query",
        READER,
        json_body({"sql": "SELECT 1 AS a", "row_format": "object"}),
        {},
    ),
    (
        "ok, transaction",
        "/v1/transaction",
        WRITER,
        json_body(
            {
                "statements": [
                    {"sql": "SELECT 1 AS a"},
                    {"sql": "SELECT $1::text AS b", "params": ["y"]},
                ]
            }
        ),
        {},
    ),
    ("unknown field", "/v1/query", WRITER, json_body({"sql": "SELECT 1", "parms": [1]}), {}),
    (
        "wrong types",
        "/v1/transaction",
        WRITER,
        json_body({"statements": [{"sql": 5}], "isolation": "sometimes"}),
        {},
    ),
    ("not JSON", "/v1/query", WRITER, b'{"sql":', {}),
    ("no body", "/v1/query", WRITER, b"", {}),
    ("not an object", "/v1/query", WRITER, b'"SELECT 1"', {}),
    ("a key twice", "/v1/query", WRITER, b'{"sql": "SELECT 1", "sql": "SELECT 2"}', {}),
    ("not UTF-8", "/v1/query", WRITER, b'{"sql": "SELECT \'\xc3\x28\'"}', {}),
    ("refused statement", "/v1/query", WRITER, json_body({"sql": "COMMIT"}), {}),
    (
        "refused in a transaction",
        "/v1/transaction",
        WRITER,
        json_body({"statements": [{"sql": "SELECT 1"}, {"sql": "PREPARE p AS SELECT 1"}]}),
        {},
    ),
    ("read key writes", "/v1/query", READER, json_body({"sql": "CREATE TEMP TABLE t (a int)"}), {}),
    ("database error", "/v1/query", WRITER, json_body({"sql": "SELECT 1 / 0"}), {}),
    (
        "over a ceiling",
        "/v1/query",
        WRITER,
        json_body({"sql": "SELECT 1", "timeout_ms": 10**9}),
        {},
    ),
    ("no key", "/v1/query", None, json_body({"sql": "SELECT 1"}), {}),
    (
        "a wrong key",
        "/v1/transaction",
        "not-a-key",
        json_body({"statements": [{"sql": "SELECT 1"}]}),
        {},
    ),
    (
        "body too large",
        "/v1/query",
        WRITER,
        json_body({"sql": "SELECT $1::text", "params": ["x" * MAX_BODY]}),
        {},
    ),
    (
        "not JSON by its type",
        "/v1/query",
        WRITER,
        json_body({"sql": "SELECT 1"}),
        {"content-type": "text/plain"},
    ),
    (
        "a node header sent",
        "/v1/query",
        WRITER,
        json_body({"sql": "SELECT 1 AS a"}),
        {"x-mirrorpool-node": "nowhere"},
    ),
    (
        "its own request id",
        "/v1/query",
        WRITER,
        json_body({"sql": "SELECT 1 AS a"}),
        {"x-request-id": "caller-id-1"},
    ),
    (
        "neon ok",
        "/sql",
        WRITER,
        json_body({"query": "SELECT $1::int AS n", "params": ["7"]}),
        {"content-type": "text/plain;charset=UTF-8"},
    ),
    (
        "neon database error",
        "/sql",
        WRITER,
        json_body({"query": "SELECT 1 / 0"}),
        {"content-type": "text/plain;charset=UTF-8"},
    ),
    ("neon not JSON", "/sql", WRITER, b"{", {"content-type": "text/plain;charset=UTF-8"}),
]


@pytest.fixture
async def both(pair: LocalPair) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """An app of each way, alike in every other setting."""
    ways: dict[str, httpx.AsyncClient] = {}
    common: dict[str, Any] = {"auth": "keys", "api_keys": KEYS, "max_body_bytes": MAX_BODY}
    async with (
        serving_ready(settings_for(pair, fast_path=True, **common)) as (fast_app, fast),
        serving_ready(settings_for(pair, fast_path=False, **common)) as (slow_app, slow),
    ):
        assert isinstance(fast_app, MirrorpoolApp) and isinstance(slow_app, MirrorpoolApp)
        assert set(fast_app.fast_answers) == {"/v1/query", "/v1/transaction", "/sql"}
        assert not slow_app.fast_answers
        ways["fast"], ways["fastapi"] = fast, slow
        yield ways


def comparable(response: httpx.Response) -> dict[str, Any]:
    """What a client sees of an answer, less what differs from one answer to the next."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body.pop("duration_ms", None)
        if "request_id" in body:  # the same as the header, which is compared
            assert body["request_id"] == response.headers["x-request-id"]
            body["request_id"] = "<the header's>"
    headers = {name: response.headers.get(name) for name in HEADERS}
    if response.headers.get("x-request-id") != "caller-id-1":
        assert response.headers["x-request-id"]
        headers["x-request-id"] = "<generated>"
    return {"status": response.status_code, "headers": headers, "body": body}


async def ask(
    client: httpx.AsyncClient,
    path: str,
    key: str | None,
    body: bytes | None,
    extra: dict[str, str],
    *,
    chunked: bool = False,
) -> httpx.Response:
    headers = {"content-type": "application/json"} | extra
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = chunks(body or b"") if chunked else body
    return await client.post(path, content=content, headers=headers)


async def test_both_ways_answer_alike(both: dict[str, httpx.AsyncClient]) -> None:
    answers: dict[str, dict[str, Any]] = {}
    for way, client in both.items():
        answers[way] = {
            name: comparable(await ask(client, path, key, body, extra))
            for name, path, key, body, extra in REQUESTS
        }
    for name, *_ in REQUESTS:
        assert answers["fast"][name] == answers["fastapi"][name], name
    fast = answers["fast"]
    # What they agree on is what a client should get.
    assert fast["ok"]["body"]["rows"] == [["42", "x"]]
    assert fast["ok"]["headers"]["x-mirrorpool-node"] == "primary"
    assert fast["a node header sent"]["headers"]["x-mirrorpool-node"] == "primary"
    assert fast["its own request id"]["headers"]["x-request-id"] == "caller-id-1"
    statuses = {name: answer["status"] for name, answer in fast.items()}
    assert statuses == {
        "ok": 200,
        "ok, objects": 200,
        "ok, transaction": 200,
        "unknown field": 400,
        "wrong types": 400,
        "not JSON": 400,
        "no body": 400,
        "not an object": 400,
        "a key twice": 400,
        "not UTF-8": 400,
        "refused statement": 400,
        "refused in a transaction": 400,
        "read key writes": 403,
        "database error": 400,
        "over a ceiling": 400,
        "no key": 401,
        "a wrong key": 401,
        "body too large": 413,
        "not JSON by its type": 415,
        "a node header sent": 200,
        "its own request id": 200,
        "neon ok": 200,
        "neon database error": 400,
        "neon not JSON": 400,
    }
    problems = {
        n for n, a in fast.items() if a["headers"]["content-type"] == "application/problem+json"
    }
    assert problems == {n for n, s in statuses.items() if s >= 400} - {"neon database error"}
    assert fast["unknown field"]["body"]["errors"] == [
        {"location": "$.parms", "message": "Extra inputs are not permitted"}
    ]
    assert fast["refused in a transaction"]["body"]["statement_index"] == 1
    assert fast["no key"]["headers"]["www-authenticate"] == "Bearer"


async def test_both_ways_refuse_a_large_body_sent_in_chunks_alike(
    both: dict[str, httpx.AsyncClient],
) -> None:
    large = json_body({"sql": "SELECT $1::text", "params": ["x" * MAX_BODY]})
    small = json_body({"sql": "SELECT 'fits' AS a"})
    answers = {}
    for way, client in both.items():
        sent = (("/v1/query", large), ("/v1/transaction", large), ("/v1/query", small))
        answers[way] = [
            comparable(await ask(client, path, WRITER, body, {}, chunked=True))
            for path, body in sent
        ]
    assert answers["fast"] == answers["fastapi"]
    assert [a["status"] for a in answers["fast"]] == [413, 413, 200]
    assert answers["fast"][0]["body"]["type"] == "urn:mirrorpool:problem:payload-too-large"


async def test_an_unexpected_error_is_the_same_500_both_ways(pair: LocalPair) -> None:
    # A fault in a route (a bug: no request should reach one) is answered by the one 500
    # handler inside the stack, whichever way the route is answered.
    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug, with a secret=hunter2 in its message")

    async def broken_route(body: QueryRequest) -> Any:
        return await broken(body)

    answers = []
    for fast in (True, False):
        app = create_app(settings_for(pair, fast_path=fast))
        app.add_api_route("/v1/broken", broken_route, methods=["POST"])
        if fast:
            endpoint = JsonEndpoint(
                QueryRequest, broken, transaction_body, app.state.engine, app.state.settings,
                app.state.keyring,
            )  # fmt: skip
            app.fast_answers = {"/v1/broken": (route_at(app.router, "/v1/broken"), endpoint)}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                response = await c.post("/v1/broken", json={"sql": "SELECT 1"})
                answers.append(comparable(response))
                stats = (await c.get("/metrics")).text
        assert 'method="POST",route="/v1/broken",status="500"' in stats
    assert answers[0] == answers[1]
    assert answers[0]["status"] == 500
    assert answers[0]["headers"]["content-type"] == "application/problem+json"
    assert answers[0]["body"]["type"] == "urn:mirrorpool:problem:internal"
    assert "hunter2" not in str(answers[0])
