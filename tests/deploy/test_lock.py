"""requirements.lock and requirements-build.lock: the image installs exactly what
pyproject.toml asks for, pinned and hash-checked, and nothing of the dev extra."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# `name==version \` then its `--hash=sha256:...` lines, as pip-compile --generate-hashes writes.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*\\?$")


def locked(path: str) -> dict[str, tuple[Version, int]]:
    """Each pinned package of a lock file: its version and how many hashes it carries."""
    pins: dict[str, tuple[Version, int]] = {}
    current = None
    for line in (REPO / path).read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            pins[current] = (Version(match[2]), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif not line.startswith(" "):
            current = None
    return pins


def names(specs: list[str]) -> set[str]:
    """The canonical package names of requirement specifiers."""
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def test_every_runtime_dependency_is_locked_at_an_allowed_version() -> None:
    pins = locked("requirements.lock")
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} is in pyproject.toml but not in requirements.lock: make lock"
        )
        assert req.specifier.contains(pins[name][0]), (
            f"requirements.lock: {req.name}=={pins[name][0]} is outside {req.specifier}"
        )


def test_extras_of_runtime_dependencies_are_locked() -> None:
    # uvicorn[standard] is what brings uvloop and httptools: without them the image would run
    # the slow pure-Python loop and parser. The extra's own requirements must be locked too.
    pins = locked("requirements.lock")
    checked = 0
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        for extra in req.extras:
            try:
                requires = distribution(req.name).requires or []
            except PackageNotFoundError:  # pragma: no cover - make install installs them all
                pytest.fail(f"{req.name} is not installed: make install")
            for dep in map(Requirement, requires):
                marker_env = {"extra": extra, "sys_platform": "linux", "platform_system": "Linux"}
                if dep.marker is not None and dep.marker.evaluate(marker_env):
                    assert canonicalize_name(dep.name) in pins, f"{req.name}[{extra}]: {dep.name}"
                    checked += 1
    assert checked, "no extra was checked: the test lost its subject"
    assert {"uvloop", "httptools"} <= set(pins)


def test_every_pin_carries_hashes() -> None:
    # pip install --require-hashes refuses a lock with an unhashed line; better to know here.
    for path in ("requirements.lock", "requirements-build.lock"):
        unhashed = [name for name, (_, hashes) in locked(path).items() if hashes == 0]
        assert not unhashed, f"{path}: no hashes for {unhashed}"


def test_the_lock_holds_no_dev_dependency() -> None:
    pins = locked("requirements.lock")
    runtime = {canonicalize_name(Requirement(s).name) for s in PYPROJECT["project"]["dependencies"]}
    dev = {
        canonicalize_name(Requirement(s).name)
        for s in PYPROJECT["project"]["optional-dependencies"]["dev"]
    }
    # pyyaml is also a runtime dependency (through uvicorn[standard]): only dev-only ones count.
    leaked = (dev - runtime - {"pyyaml"}) & set(pins)
    assert not leaked, f"dev dependencies in requirements.lock: {leaked}"
    assert "pytest" in dev  # the check above has something to find


def test_the_build_lock_covers_the_build_backend() -> None:
    pins = locked("requirements-build.lock")
    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name][0]), (spec, pins)
