"""A client generated from /openapi.json by openapi-python-client builds without a warning
and runs a query against a real service."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from app.devdb import LocalPair
from tests.conftest import start_server, stop_server

REPO = Path(__file__).resolve().parents[2]
GENERATOR = Path(sys.executable).parent / "openapi-python-client"
CONFIG = REPO / "deploy" / "openapi-python-client.yaml"

USE_CLIENT = """
import json, sys
from mirrorpool_client import AuthenticatedClient
from mirrorpool_client.api.query import query_v1_query_post
from mirrorpool_client.models import Problem, QueryRequest, QueryResponse

client = AuthenticatedClient(base_url=sys.argv[1], token=sys.argv[2])
ok = query_v1_query_post.sync(
    client=client, body=QueryRequest(sql="SELECT $1::int + 1 AS answer", params=[41])
)
assert isinstance(ok, QueryResponse), ok
bad = query_v1_query_post.sync(client=client, body=QueryRequest(sql="SELECT 1/0"))
assert isinstance(bad, Problem), bad
print(json.dumps({"columns": [c.name for c in ok.columns], "rows": ok.rows,
                  "node": ok.node, "problem": bad.type_, "sqlstate": bad.sqlstate}))
"""


def test_generated_client_has_no_warnings_and_runs_a_query(pair: LocalPair, tmp_path: Path) -> None:
    key = secrets.token_urlsafe(16)
    digest = hashlib.sha256(key.encode()).hexdigest()
    keys = [{"id": "client", "sha256": digest, "scopes": ["write"]}]
    server = start_server(pair, MIRRORPOOL_AUTH="keys", MIRRORPOOL_API_KEYS=json.dumps(keys))
    try:
        spec = tmp_path / "openapi.json"
        spec.write_bytes(httpx.get(server.url + "/openapi.json", timeout=5).content)
        generated = subprocess.run(
            [str(GENERATOR), "generate", "--path", str(spec), "--config", str(CONFIG)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        output = generated.stdout + generated.stderr
        assert generated.returncode == 0, output
        assert "warning" not in output.lower(), output
        package = tmp_path / "mirrorpool-client"
        used = subprocess.run(
            [sys.executable, "-c", USE_CLIENT, server.url, key],
            cwd=package, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert used.returncode == 0, used.stderr
        answer = json.loads(used.stdout)
    finally:
        stop_server(server)
    assert answer == {
        "columns": ["answer"],
        "rows": [[42]],
        "node": "primary",
        "problem": "urn:mirrorpool:problem:database-error",
        "sqlstate": "22012",
    }
