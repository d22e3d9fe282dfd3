"""A request's deadline ends its work on the server, not only its answer.

Each test reads pg_stat_activity after the 504: the statement is no longer running, whatever
it did to outlast the deadline (a timeout of its own switched off, a function that catches
the cancel, many statements in one transaction), and the pool never had more backends on the
server than its size, since a connection given up on counts against its pool until its
backend is gone (app/cluster/backends.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from psycopg import sql

from app.api.auth import hash_key
from app.devdb import SERVICE, LocalPair
from tests.conftest import as_owner, login_role, serving_ready, settings_for
from tests.waiting import eventually

# A function of the database's own that swallows every cancel (statement_timeout included).
STUBBORN = """
CREATE OR REPLACE FUNCTION stubborn_sleep() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        BEGIN
            PERFORM pg_sleep(0.05);
        EXCEPTION WHEN query_canceled THEN
            NULL;
        END;
    END LOOP;
END $$
"""

CASES: dict[str, dict[str, Any]] = {
    "own-timeout-off": {
        "statements": [
            {"sql": "SET LOCAL statement_timeout = 0"},
            {"sql": "SELECT pg_sleep(30)"},
        ],
        "timeout_ms": 200,
    },
    "function-catches-the-cancel": {
        "statements": [{"sql": "SELECT stubborn_sleep()"}],
        "timeout_ms": 200,
    },
    "many-statements": {
        "statements": [{"sql": "SELECT pg_sleep(0.9)"}] * 8,
        "timeout_ms": 1000,
    },
}


def app_name() -> str:
    return f"mp_deadline_{uuid.uuid4().hex[:8]}"


def backends(pair: LocalPair, application_name: str, user: str = SERVICE) -> list[str]:
    """The states of the backends of the pools named `application_name`, from the harness."""
    with pair.primary.connect() as conn:
        rows = conn.execute(
            "SELECT coalesce(state, '') FROM pg_stat_activity"
            " WHERE application_name = %s AND usename = %s",
            [application_name, user],
        ).fetchall()
    return [str(row[0]) for row in rows]


class Sampler:
    """Counts a pool's backends on the server every few milliseconds, in a thread of its own,
    and keeps the largest count seen."""

    def __init__(self, pair: LocalPair, application_name: str, user: str = SERVICE) -> None:
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(pair, application_name, user), daemon=True
        )

    def _run(self, pair: LocalPair, application_name: str, user: str) -> None:
        with pair.primary.connect() as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = %s AND usename = %s",
                    [application_name, user],
                ).fetchone()
                assert row is not None
                self.most = max(self.most, int(row[0]))
                self.samples += 1
                self._stop.wait(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def stubborn(pair: LocalPair) -> None:
    as_owner(pair, STUBBORN)


@pytest.mark.parametrize("case", list(CASES))
async def test_no_backend_runs_on_after_a_deadline(
    pair: LocalPair, stubborn: None, case: str
) -> None:
    name = app_name()
    settings = settings_for(pair, pool_min_size=1, pool_max_size=1, application_name=name)
    async with serving_ready(settings) as (_, client):
        started = time.monotonic()
        answer = await client.post("/v1/transaction", json=CASES[case])
        assert answer.status_code == 504, answer.text
        assert answer.json()["sqlstate"] == "57014"
        deadline = CASES[case]["timeout_ms"] / 1000 + 1.0
        assert time.monotonic() - started < deadline + 1.0
        stats = (await client.get("/pool/stats")).json()
        primary = next(n for n in stats["nodes"] if n["name"] == "primary")
        assert primary["backends_ending"] == 1
        # The pool's only connection is the one that ran the statement: the next request
        # gets it back (or its replacement) once its backend is gone, never beside it.
        after = await client.post(
            "/v1/query",
            json={
                "sql": "SELECT count(*)::int FROM pg_stat_activity"
                " WHERE application_name = $1 AND usename = current_user",
                "params": [name],
            },
        )
        assert after.status_code == 200, after.text
        assert after.json()["rows"] == [[1]], "a backend ran beside the pool's connection"
        waited = time.monotonic() - started - deadline
        assert waited < 2.0, f"the pool waited {waited:.2f} s for the backend to go"
        assert backends(pair, name) == ["idle"]


async def test_timed_out_requests_never_hold_more_backends_than_the_pool(
    pair: LocalPair,
) -> None:
    name = app_name()
    settings = settings_for(pair, pool_min_size=2, pool_max_size=2, application_name=name)
    body = {
        "statements": [{"sql": "SET LOCAL statement_timeout = 0"}, {"sql": "SELECT pg_sleep(30)"}],
        "timeout_ms": 100,
    }
    async with serving_ready(settings) as (_, client):
        await eventually(lambda: len(backends(pair, name)) == 2, "the pool filled")
        with Sampler(pair, name) as sampler:
            for _ in range(3):
                answers = await asyncio.gather(
                    *(client.post("/v1/transaction", json=body) for _ in range(4))
                )
                assert {a.status_code for a in answers} == {504}, [a.text for a in answers]
            ok = await client.post("/v1/query", json={"sql": "SELECT 1"})
            assert ok.status_code == 200, ok.text
        assert sampler.samples > 50
        assert sampler.most <= 2, f"{sampler.most} backends for a pool of 2"
    assert "active" not in backends(pair, name)


async def test_a_role_keys_backend_is_ended_and_counted_against_its_pool(
    pair: LocalPair,
) -> None:
    # The role's backends are another login's: ending them needs pg_signal_backend, which
    # the local pair grants the service's login (README, "Logins: a recipe").
    role, password = login_role(pair, "deadline")
    key = f"role-{uuid.uuid4().hex}"
    name = app_name()
    settings = settings_for(
        pair,
        auth="keys",
        api_keys=[{"id": "limited", "sha256": hash_key(key), "scopes": ["write"], "role": role}],
        role_passwords={role: password},
        role_pool_max_size=1,
        application_name=name,
    )
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with serving_ready(settings) as (_, client):
            with Sampler(pair, name, role) as sampler:
                for _ in range(3):
                    answer = await client.post(
                        "/v1/transaction", json=CASES["own-timeout-off"], headers=headers
                    )
                    assert answer.status_code == 504, answer.text
                after = await client.post("/v1/query", json={"sql": "SELECT 1"}, headers=headers)
                assert after.status_code == 200, after.text
            assert sampler.most <= 1, f"{sampler.most} backends of {role} for a pool of 1"
            assert "active" not in backends(pair, name, role)
    finally:
        with pair.primary.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


async def test_a_streams_deadline_ends_its_backend(pair: LocalPair, stubborn: None) -> None:
    name = app_name()
    settings = settings_for(pair, pool_min_size=1, pool_max_size=1, application_name=name)
    async with serving_ready(settings) as (_, client):
        for sql_text in (
            "SELECT stubborn_sleep()",
            "SELECT g, pg_sleep(0.2) FROM generate_series(1, 100) g",
        ):
            answer = await client.post(
                "/v1/query/stream", json={"sql": sql_text, "timeout_ms": 300}
            )
            if answer.status_code == 200:  # the rows had begun: the stream ends with an error
                last = answer.text.strip().splitlines()[-1]
                assert '"status":"error"' in last and "57014" in last, last
            else:
                assert answer.status_code == 504, answer.text
            after = await client.post(
                "/v1/query",
                json={
                    "sql": "SELECT count(*)::int FROM pg_stat_activity"
                    " WHERE application_name = $1 AND usename = current_user",
                    "params": [name],
                },
            )
            assert after.json()["rows"] == [[1]], sql_text
            assert backends(pair, name) == ["idle"], sql_text
