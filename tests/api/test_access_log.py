"""JSON logs: every line parses, every request is one line with its id and outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx

from app.devdb import SERVICE, LocalPair, free_ports
from tests.waiting import eventually_sync

SECRET_PARAM = "do-not-log-this-value"


def test_json_logs_one_line_per_request(pair: LocalPair) -> None:
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")} | {
        "MIRRORPOOL_PRIMARY_DSN": pair.primary.dsn(user=SERVICE),
        "MIRRORPOOL_PORT": str(port),
        "MIRRORPOOL_AUTH": "disabled",
        "MIRRORPOOL_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        eventually_sync(up, "the server")
        ok = httpx.post(
            url + "/v1/query",
            json={"sql": "SELECT $1::text", "params": [SECRET_PARAM]},
            headers={"X-Request-ID": "trace-me-1"},
        )
        bad = httpx.post(url + "/v1/query", json={"sql": "SELECT 1/0"})
        named = httpx.get(url + "/v1/queries")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    lines = [line for line in (proc.stdout.read() if proc.stdout else "").splitlines() if line]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    access = [e for e in entries if e["logger"] == "app.access"]
    by_id = {e["request_id"]: e for e in access}
    first = by_id["trace-me-1"]
    assert (first["method"], first["path"], first["status"], first["node"]) == (
        "POST", "/v1/query", 200, "primary",
    )  # fmt: skip
    assert first["duration_ms"] > 0
    failed = by_id[bad.headers["x-request-id"]]
    assert (failed["status"], failed["sqlstate"]) == (400, "22012")
    assert by_id[named.headers["x-request-id"]]["path"] == "/v1/queries"
    assert ok.status_code == 200
    assert SECRET_PARAM not in "\n".join(lines)
    assert "SELECT 1/0" not in "\n".join(lines)
