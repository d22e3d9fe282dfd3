"""The Prometheus files in deploy/: valid YAML whose rules name metrics mirrorpool exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.devdb import LocalPair
from tests.conftest import serving_ready, settings_for

DEPLOY = Path(__file__).parents[2] / "deploy" / "prometheus"


async def test_alert_rules_use_only_exported_metrics(pair: LocalPair) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {"MirrorpoolNoWriter", "MirrorpoolReplicationLag", "MirrorpoolPoolSaturated"} <= {
        r["alert"] for r in rules
    }
    async with serving_ready(settings_for(pair)) as (_, client):
        await client.post("/v1/query", json={"sql": "SELECT 1/0"})
        exported = (await client.get("/metrics")).text
    for rule in rules:
        for metric in re.findall(r"mirrorpool_[a-z_]+", rule["expr"]):
            assert f"\n{metric}" in exported or f"\n{metric}{{" in exported, (rule["alert"], metric)
