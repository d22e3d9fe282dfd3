"""An attack an attacker's review of the trust change found; it is now refused or undone,
and this test keeps it so. As the review found it:

Third review pass. /v1/query/stream goes through FastAPI, whose JSON reader accepts a lone
UTF-16 surrogate escape ("\\ud800") in a string. The stream's statement is sent by psycopg's
cursor (app/sql/streaming.py), not through the pipeline's dumping that turns a value
it cannot send into a 400 (app/sql/pipeline/sending.py dump): the UnicodeEncodeError is no
psycopg.Error and comes back as a 500. Every bad input should get a clear 4xx."""

from __future__ import annotations

import httpx

from tests.attacks.conftest import headers


async def test_a_parameter_that_cannot_be_encoded_is_a_400_on_the_stream(
    client: httpx.AsyncClient,
) -> None:
    body = b'{"sql": "SELECT $1::text AS t", "params": ["\\ud800"]}'
    try:
        answer = await client.post(
            "/v1/query/stream",
            content=body,
            headers={**headers("write"), "content-type": "application/json"},
        )
    except Exception as exc:  # the in-process transport re-raises what became a 500
        raise AssertionError(f"500: {exc!r}") from None
    assert 400 <= answer.status_code < 500, answer.text
