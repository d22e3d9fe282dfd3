"""Every MIRRORPOOL_* variable the deployment files set is one mirrorpool reads: a renamed or
removed setting fails here instead of being silently ignored in production."""

from __future__ import annotations

import re

from app.settings import ENV_PREFIX, Settings
from tests.deploy import REPO

NAME = re.compile(rf"\b{ENV_PREFIX}([A-Z0-9_]+)\b")


def deployment_files() -> list[str]:
    """The files, relative to the repository, that configure mirrorpool for deployment."""
    found = [REPO / "Dockerfile"]
    for pattern in ("*.yaml", "*.yml"):
        found += (REPO / "deploy").rglob(pattern)
    return sorted(str(path.relative_to(REPO)) for path in found)


def test_every_variable_named_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    files = deployment_files()
    assert "deploy/compose.yaml" in files
    named = 0
    for name in files:
        for match in NAME.finditer((REPO / name).read_text()):
            named += 1
            assert match[1].lower() in fields, f"{name}: {match[0]} is not a mirrorpool setting"
    assert named > 10
