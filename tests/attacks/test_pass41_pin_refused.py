"""Pass 41: behind PgBouncer, where the service's login may not make temporary tables (the
database's TEMPORARY privilege revoked from PUBLIC, a common hardening) but the schema's
owner may, the pin of pass 40 (app/sql/pgbouncer.py _PIN_LOCAL_BUFFERS_SQL) makes nothing:
its CREATE TEMPORARY TABLE is refused (insufficient_privilege) and its handler swallows the
refusal. The owner's SECURITY DEFINER code, which may make them, then raises temp_buffers to
32GB before its first temporary table, as in pass 40, and the cleanup's DISCARD TEMP holds
the pooler's only server connection for seconds past the request.

    superuser: REVOKE TEMPORARY ON DATABASE postgres FROM PUBLIC;
               GRANT TEMPORARY ON DATABASE postgres TO the owner
    owner:     make40(n) of test_pass40_unbounded_drop.py (SECURITY DEFINER: temp_buffers 32GB,
               one temporary table with a row, then n more)
    key A:     SELECT make40(300), timeout_ms 1000 -> 200, after about 3.5 s
    key B:     SELECT 1, timeout_ms 1000, sent as A's cleanup runs -> 504 after about 2 s

Root cause: InitTempTableNamespace checks ACL_CREATE_TEMP against the current user, which in
a SECURITY DEFINER function is the owner: the login's refusal in the pin says nothing of what
the code may do. The pin's handler takes "the login may not" for "no temporary table can be
made here", the temp namespace is never made by the pin (pg_my_temp_schema() stays 0), the
local buffers are first made by the code's own table, at the code's 32GB, and the commit of
the cleanup's DISCARD TEMP then scans 4 M local buffer descriptors for each of the 301
relations (DropRelFileNodeAllLocalBuffers), with interrupts held and no timeout.

Fixed (app/sql/pgbouncer.py _CLEANUP_LIMITS_SQL): the cleanup sets the session's usual
temp_buffers, which PostgreSQL refuses once the local buffers were made at another size: the
cleanup fails before DISCARD TEMP, the backend ends, the pooler lets it go (A 200 after
0.5 s, B 200 after 0.1 s). What it leaves: such code's tables dropped at its own COMMIT (ON
COMMIT DROP) or ROLLBACK still scan them there, on the request's end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devdb import OWNER, LocalPair
from tests.attacks.conftest import b_while_a_cleans, beside_one_server_connection
from tests.attacks.test_pass40_unbounded_drop import CLEANING, SETUP, TEARDOWN


@pytest.fixture
def login_without_temp(pair: LocalPair) -> Iterator[None]:
    """The service's login may not make temporary tables in `postgres`; the owner may."""
    with pair.primary.connect() as conn:
        conn.execute("REVOKE TEMPORARY ON DATABASE postgres FROM PUBLIC")
        conn.execute(f"GRANT TEMPORARY ON DATABASE postgres TO {OWNER}")
    try:
        yield
    finally:
        with pair.primary.connect() as conn:
            conn.execute("GRANT TEMPORARY ON DATABASE postgres TO PUBLIC")
            conn.execute(f"REVOKE TEMPORARY ON DATABASE postgres FROM {OWNER}")


async def test_owner_code_raises_temp_buffers_where_the_login_has_no_temp(
    pair: LocalPair, work_dir: Path, login_without_temp: None
) -> None:
    async with beside_one_server_connection(pair, work_dir, SETUP, TEARDOWN) as (_, client):
        seen = await b_while_a_cleans(pair, client, "SELECT make40(300)", CLEANING)
        a, a_took, b, b_took, said = seen.a, seen.a_took, seen.b, seen.b_took, seen.said
        print(said)
        assert b.status_code == 200, f"{said}: {b.text}"
        assert b_took < 0.5, said
        # A's code either fails on its setting (the pin held) or runs within its time.
        assert a.status_code in (200, 400), f"{said}: {a.text}"
        assert a_took < 2.5, f"A's request, of a 1000 ms timeout: {said}"
