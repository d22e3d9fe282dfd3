"""Migration files: `NNNN_name.up.sql` with an optional `NNNN_name.down.sql`.

Versions are integers ordered numerically (gaps allowed). A header line
`-- mirrorpool: no-transaction` runs the file outside a transaction (one statement, e.g.
CREATE INDEX CONCURRENTLY); `-- mirrorpool: lock_timeout=5s` overrides the lock timeout.
The checksum is taken over the text with a BOM dropped and CRLF folded to LF, so an editor's
line endings change nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from app.errors import SettingsError

_FILE = re.compile(r"(?P<version>\d+)_(?P<name>[A-Za-z0-9_\-]+)\.(?P<kind>up|down)\.sql")
_DIRECTIVE = re.compile(r"--\s*mirrorpool:\s*(?P<body>.+?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"(?P<n>\d+)\s*(?P<unit>ms|s|min)?")
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, None: 1}


def normalise(raw: bytes) -> str:
    """The file's text as checksummed and run: no BOM, LF line endings."""
    text = raw.decode("utf-8")
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def checksum(text: str) -> str:
    """sha256 of normalised text, as `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Script:
    """One direction of a migration: its SQL and how to run it."""

    path: Path
    sql: str
    checksum: str
    transactional: bool
    lock_timeout_ms: int | None


@dataclass(frozen=True)
class Migration:
    """A version with its up script and, when there is one, its down script."""

    version: int
    name: str
    up: Script
    down: Script | None


def read_script(path: Path) -> Script:
    """Read a script and its `-- mirrorpool:` directives."""
    try:
        text = normalise(path.read_bytes())
    except UnicodeDecodeError:
        raise SettingsError(f"{path.name}: not UTF-8 text") from None
    transactional = True
    lock_timeout_ms: int | None = None
    for line in text.splitlines():
        match = _DIRECTIVE.fullmatch(line.strip())
        if not match:
            continue
        for item in (p.strip() for p in match["body"].split(",")):
            if item.lower() == "no-transaction":
                transactional = False
            elif item.lower().startswith("lock_timeout="):
                lock_timeout_ms = _parse_ms(item.split("=", 1)[1], path)
            else:
                raise SettingsError(f"{path.name}: unknown directive {item!r}")
    return Script(path, text, checksum(text), transactional, lock_timeout_ms)


def _parse_ms(value: str, path: Path) -> int:
    match = _DURATION.fullmatch(value.strip())
    if not match:
        raise SettingsError(f"{path.name}: lock_timeout must look like 500ms, 5s or 1min")
    return int(match["n"]) * _UNIT_MS[match["unit"]]


def discover(folder: Path) -> list[Migration]:
    """Every migration in `folder`, by version; a bad or duplicate file name is an error."""
    if not folder.is_dir():
        return []
    ups: dict[int, list[Path]] = {}
    downs: dict[int, list[Path]] = {}
    problems: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name.startswith("."):
            continue
        match = _FILE.fullmatch(path.name)
        if not match:
            if path.suffix == ".sql":
                problems.append(f"{path.name}: not named NNNN_name.up.sql or NNNN_name.down.sql")
            continue
        target = ups if match["kind"] == "up" else downs
        target.setdefault(int(match["version"]), []).append(path)
    for version, paths in sorted({**ups, **downs}.items()):
        for group in (ups.get(version, []), downs.get(version, [])):
            if len(group) > 1:
                problems.append(
                    f"version {version} is claimed by {', '.join(p.name for p in group)}"
                )
        if version not in ups:
            problems.append(f"{paths[0].name}: a down file without its up file")
    if problems:
        raise SettingsError(f"bad migrations in {folder}: " + "; ".join(problems))
    migrations = []
    for version in sorted(ups):
        up_path = ups[version][0]
        name = _FILE.fullmatch(up_path.name)["name"]  # type: ignore[index]
        down_paths = downs.get(version)
        migrations.append(
            Migration(
                version,
                name,
                read_script(up_path),
                read_script(down_paths[0]) if down_paths else None,
            )
        )
    return migrations
