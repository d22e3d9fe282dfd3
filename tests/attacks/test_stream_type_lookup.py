"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Fourth review pass. /v1/query/stream names its columns from inside the stream
(app/sql/streaming.py): at the first row it calls TypeNames.columns(), which, for a type
psycopg does not know (pg_snapshot, an enum, citext, any type of the schema's own), runs
`SELECT ... FROM pg_catalog.pg_type` on the same connection. psycopg's cursor.stream() holds
the connection's lock for the whole stream, so the lookup waits for a lock its own caller
holds: the request hangs until its deadline, holding a pooled connection, and then answers
500 (the API's `events.aclose()` runs while the timed-out `head()` is still inside the
generator: "aclose(): asynchronous generator is already running"), the first time any key
streams such a type on a node."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.attacks.conftest import headers


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"mirror_dsn": None}


async def test_a_stream_of_a_type_psycopg_does_not_know_answers(
    client: httpx.AsyncClient,
) -> None:
    started = time.perf_counter()
    try:
        answer = await client.post(
            "/v1/query/stream",
            # pg_snapshot (OID 5038) is not one of psycopg's built-in types: it is looked up
            json={"sql": "SELECT pg_current_snapshot() AS s", "timeout_ms": 2000},
            headers=headers("write"),
        )
    except Exception as exc:  # the in-process transport re-raises what became a 500
        raise AssertionError(f"500 after {time.perf_counter() - started:.1f} s: {exc!r}") from None
    assert answer.status_code == 200, answer.text
    head = answer.text.splitlines()[0]
    assert '"type":"pg_snapshot"' in head, answer.text
    assert time.perf_counter() - started < 1.5, "the stream waited for its own deadline"
