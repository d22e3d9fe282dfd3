"""A whole run (start, queries, errors, failover, shutdown) leaks no password and no key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from app.api.auth import hash_key
from app.devdb import SERVICE, LocalPair, free_ports
from tests.waiting import eventually_sync

KEY = "secret-scan-key-5f1e9c"
WRONG_KEY = "secret-scan-wrong-key-77a"


def test_every_log_line_and_answer_of_a_full_run_is_clean(work_dir: Path) -> None:
    with LocalPair(work_dir / "secrets") as own:
        port = free_ports(1)[0]
        keys = [{"id": "scan", "sha256": hash_key(KEY), "scopes": ["read", "write", "admin"]}]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")} | {
            "MIRRORPOOL_PRIMARY_DSN": own.primary.dsn(user=SERVICE),
            "MIRRORPOOL_MIRROR_DSN": own.mirrors[0].dsn(user=SERVICE),
            "MIRRORPOOL_MIGRATIONS_DSN": own.migrations_dsn(),
            "MIRRORPOOL_PORT": str(port),
            "MIRRORPOOL_API_KEYS": json.dumps(keys),
            "MIRRORPOOL_LOG_LEVEL": "debug",
            "MIRRORPOOL_HEALTH_INTERVAL": "0.1",
            "MIRRORPOOL_HEALTH_THRESHOLD": "1",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {KEY}"}
        answers: list[str] = []

        def call(method: str, path: str, **kwargs: object) -> httpx.Response:
            response = httpx.request(method, url + path, timeout=10, **kwargs)  # type: ignore[arg-type]
            answers.append(f"{response.status_code} {response.headers} {response.text}")
            return response

        def ready() -> bool:
            try:
                return httpx.get(url + "/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            eventually_sync(ready, "the server")
            call("POST", "/v1/query", json={"sql": "SELECT 1"}, headers=auth)
            call("POST", "/v1/query", json={"sql": "SELEC 1"}, headers=auth)
            call("POST", "/v1/query", json={"sql": "SELECT current_setting('nope')"}, headers=auth)
            call("POST", "/v1/query", json={"sql": "SELECT 1"}, headers={"X-API-Key": WRONG_KEY})
            for password in (KEY, WRONG_KEY):  # Neon's driver: the key in a URL header
                neon = {"Neon-Connection-String": f"postgresql://app:{password}@h/db"}
                for text in ("SELECT 1", "SELECT 1/0"):
                    call("POST", "/sql", content=json.dumps({"query": text}), headers=neon)
            for path in ("/health", "/pool/stats", "/metrics", "/openapi.json", "/docs"):
                call("GET", path, headers=auth)
            own.primary.kill()  # failover: node down, writer lost, reads from the mirror
            eventually_sync(
                lambda: call("GET", "/health").json()["writer"] is None, "the writer to be lost"
            )
            call("POST", "/v1/query", json={"sql": "SELECT 1", "read_only": True}, headers=auth)
            call("POST", "/v1/query", json={"sql": "SELECT 1"}, headers=auth)
            call("GET", "/pool/stats", headers=auth)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
        logs = proc.stdout.read() if proc.stdout else ""
    everything = logs + "\n".join(answers)
    assert "node_down primary" in logs  # the failover really happened and was logged
    assert "pools closed" in logs  # and so did the shutdown
    assert "401" in "\n".join(answers)
    assert "division by zero" in "\n".join(answers)  # /sql answered with the right key
    for secret in (own.password, KEY, WRONG_KEY, hash_key(KEY)):
        assert secret not in everything
