"""JSON logs: every line parses, every request is one line with its id and outcome."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from app.devdb import SERVICE, LocalPair, free_ports
from tests.conftest import serving_ready, settings_for, start_server, stop_server
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


def test_text_logs_escape_what_a_client_sent(pair: LocalPair) -> None:
    server = start_server(pair, MIRRORPOOL_LOG_LEVEL="info", MIRRORPOOL_LOG_FORMAT="text")
    forged = "2026-12-01 00:00:00,000 WARNING app.cli: forged"
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            path = "/nowhere%0D%0A" + forged.replace(" ", "%20") + "%1B[2J%E2%80%A8end"
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 404")
    finally:
        stop_server(server)
    log = server.proc.stderr.read() if server.proc.stderr else ""
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith(forged)], log
    access = [line for line in lines if "app.access" in line and "/nowhere" in line]
    assert len(access) == 1, log
    assert "/nowhere\\r\\n2026-12-01" in access[0]
    assert "\\x1b[2J\\u2028end 404" in access[0]
    assert "\x1b" not in log


async def test_repeated_503s_fold_into_one_line_per_second_per_route_and_problem(
    pair: LocalPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access")
    # The mirror alone, as the "primary": no node accepts writes, as during a failover.
    settings = settings_for(pair, primary_dsn=pair.mirrors[0].dsn(user=SERVICE), mirror_dsn=None)
    write = {"sql": "CREATE TABLE folded_never (id int)"}
    sent: Counter[str] = Counter()
    async with serving_ready(settings) as (_, client):
        started = time.monotonic()
        while time.monotonic() - started < 2.5 and sum(sent.values()) < 3000:
            for path, body in (("/v1/query", write), ("/v1/transaction", {"statements": [write]})):
                response = await client.post(path, json=body)
                assert response.status_code == 503
                assert response.json()["type"] == "urn:mirrorpool:problem:no-writer"
                sent[path] += 1
            # A real server's loop runs its timers between socket reads; in-process, a
            # request that fails before any I/O never hands the loop back by itself.
            await asyncio.sleep(0)
        assert (await client.get("/health/live")).status_code == 200
        elapsed = time.monotonic() - started
    # Leaving serving() shut the app down, which logs what was still counted.
    access = [r for r in caplog.records if r.name == "app.access"]
    fields = [r.__dict__["fields"] for r in access]
    assert any(f["path"] == "/health/live" and f["status"] == 200 for f in fields)
    for path, count in sent.items():
        lines = [r for r, f in zip(access, fields, strict=True) if f["path"] == path]
        first = [r for r in lines if "repeated" not in r.__dict__["fields"]]
        folded = [r for r in lines if "repeated" in r.__dict__["fields"]]
        assert len(first) == 1, path
        assert first[0].levelno == logging.WARNING
        assert first[0].__dict__["fields"]["problem"] == "no-writer"
        assert first[0].__dict__["fields"]["request_id"]
        assert 1 + sum(r.__dict__["fields"]["repeated"] for r in folded) == count, path
        # One line per second, not one per request.
        assert count > 50, count
        assert len(folded) <= math.ceil(elapsed) + 1, (len(folded), elapsed)
        assert f"{path} 503 no-writer: " in folded[0].getMessage()
        gaps = [b.created - a.created for a, b in itertools.pairwise(folded[:-1])]
        assert all(gap > 0.9 for gap in gaps), gaps
