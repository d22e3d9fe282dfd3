"""/docs works without internet: its assets come from mirrorpool, and Chromium renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.conftest import LiveServer

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=15000",
]  # fmt: skip


def test_docs_page_loads_only_local_assets(live_server: LiveServer) -> None:
    html = httpx.get(live_server.url + "/docs", timeout=10).text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources, "the page references its script and stylesheet"
    assert all(s.startswith("/docs/assets/") for s in sources), sources
    for source in sources:
        assert httpx.get(live_server.url + source, timeout=10).status_code == 200, source


def test_docs_page_renders_every_route_in_chromium(live_server: LiveServer, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "make test installs Chromium (tests/tools.sh)"
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}", "--dump-dom",
         live_server.url + "/docs"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    dom = result.stdout
    spec = httpx.get(live_server.url + "/openapi.json", timeout=10).json()
    for path in spec["paths"]:
        assert f'data-path="{path}"' in dom, path
    assert "Authorize" in dom
