"""Folder formats: which files are migrations, and what their names and sections say.

- mirrorpool's own, which is golang-migrate's: `<version>_<description>.up.sql` with an optional
  `<version>_<description>.down.sql`; the description may hold dots (`0002_1.7.0_schema.up.sql`).
- Flyway's: `V<version>__<description>.sql`, `U<version>__<description>.sql` (its undo script:
  the down file), `R__<description>.sql` (repeatable), each with an optional `<file>.conf`
  beside it; found in subfolders too, as Flyway finds them.
- dbmate's: `<version>_<description>.sql`, one file with a `-- migrate:up` section and an
  optional `-- migrate:down` section, options after the marker (`transaction:false`).

One folder holds one format: a mixture is refused, naming a file of each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.errors import DatabaseError, MigrationFolderError
from app.migrations.files import Migration, Script, script
from app.migrations.versions import Version
from app.sql.tree import statement_starts

Format = Literal["mirrorpool", "flyway", "dbmate"]
Role = Literal["up", "down", "repeatable"]
FORMAT_NAMES: dict[Format, str] = {
    "mirrorpool": "mirrorpool/golang-migrate",
    "flyway": "Flyway",
    "dbmate": "dbmate",
}
ACCEPTED = (
    "name migrations NNNN_name.up.sql / NNNN_name.down.sql (mirrorpool, golang-migrate), "
    "V1__name.sql / U1__name.sql / R__name.sql (Flyway) or NNNN_name.sql with "
    "-- migrate:up (dbmate)"
)

_UPDOWN = re.compile(r"(?P<version>\d+)_(?P<name>.*)\.(?P<role>up|down)\.sql")
_FLYWAY = re.compile(r"(?P<prefix>[VU])(?P<version>\d+(?:[._]\d+)*)__(?P<name>.+)\.sql")
_FLYWAY_REPEATABLE = re.compile(r"R__(?P<name>.+)\.sql")
_DBMATE = re.compile(r"(?P<version>\d+)_?(?P<name>.*)\.sql")
_DBMATE_MARKER = re.compile(r"\s*--\s*migrate:(?P<section>up|down)(?P<options>(?:\s+\S+)*)\s*")
# Script configuration keys (V1__x.sql.conf) that mirrorpool honours or may ignore.
_FLYWAY_CONFIG = frozenset({"executeInTransaction", "encoding", "placeholderReplacement"})


@dataclass(frozen=True)
class FileName:
    """What a migration file's name says."""

    format: Format
    role: Role
    version: Version | None
    name: str


def file_name(name: str) -> FileName | None:
    """The format, role, version and description a file name spells; None for a name no
    format uses."""
    if match := _UPDOWN.fullmatch(name):
        role: Role = "up" if match["role"] == "up" else "down"
        return FileName("mirrorpool", role, Version.parse(match["version"]), match["name"])
    if match := _FLYWAY.fullmatch(name):
        # Flyway shows a description with its underscores as spaces, and records it so.
        description = match["name"].replace("_", " ")
        role = "up" if match["prefix"] == "V" else "down"
        return FileName("flyway", role, Version.parse(match["version"]), description)
    if match := _FLYWAY_REPEATABLE.fullmatch(name):
        return FileName("flyway", "repeatable", None, match["name"].replace("_", " "))
    if match := _DBMATE.fullmatch(name):
        return FileName("dbmate", "up", Version.parse(match["version"]), match["name"])
    return None


def scripts_of(
    named: FileName, path: Path, file: str, text: str, config: str | None
) -> list[Script]:
    """The scripts one file holds: one, or a dbmate file's up and (when it has one) down."""
    if named.format == "dbmate":
        return _dbmate_sections(path, file, text)
    no_transaction = _flyway_config(config, file) if config is not None else None
    return [script(path, file, text, no_transaction=no_transaction)]


def _flyway_config(text: str, file: str) -> str | None:
    """The no-transaction directive of a Flyway script configuration file, if it has one."""
    found = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if key not in _FLYWAY_CONFIG:
            raise MigrationFolderError(
                f"{file}.conf: {key!r} is not read by mirrorpool (only executeInTransaction)"
            )
        if key == "executeInTransaction" and value.lower() == "false":
            found = f"{key}=false"
        if key == "encoding" and value.replace("-", "").lower() != "utf8":
            raise MigrationFolderError(f"{file}.conf: mirrorpool reads UTF-8 files only")
    return found


def _dbmate_sections(path: Path, file: str, text: str) -> list[Script]:
    """A dbmate file's `-- migrate:up` and `-- migrate:down` sections, each from its marker
    line on (the marker lines are comments: the file's line numbers stay right)."""
    markers: list[tuple[str, int, str]] = []  # (section, offset, options)
    offset = 0
    for line in text.split("\n"):
        match = _DBMATE_MARKER.fullmatch(line)
        if match:
            markers.append((match["section"], offset, match["options"].strip()))
        offset += len(line) + 1
    sections = [m[0] for m in markers]
    if sections.count("up") != 1 or sections.count("down") > 1:
        raise MigrationFolderError(
            f"{file}: a dbmate file holds one `-- migrate:up` section and at most one "
            f"`-- migrate:down` section; it has {sections.count('up')} and {sections.count('down')}"
        )
    if sections[0] != "up":
        raise MigrationFolderError(f"{file}: `-- migrate:up` must come before `-- migrate:down`")
    try:
        before = statement_starts(text[: markers[0][1]])
    except DatabaseError as exc:
        raise MigrationFolderError(f"{file}: before `-- migrate:up`: {exc.detail}") from None
    if before:
        raise MigrationFolderError(
            f"{file}: statements before `-- migrate:up` belong to no section"
        )
    scripts = []
    for index, (_, start, options) in enumerate(markers):
        end = markers[index + 1][1] if index + 1 < len(markers) else len(text)
        no_transaction = "transaction:false" if "transaction:false" in options.split() else None
        scripts.append(
            script(
                path,
                file,
                text[start:end],
                line_offset=text.count("\n", 0, start),
                no_transaction=no_transaction,
            )
        )
    return scripts


@dataclass(frozen=True)
class Catalog:
    """What a folder holds: its format, its versions in order, then its repeatable scripts
    by description (as Flyway runs them)."""

    format: Format | None
    migrations: list[Migration]


@dataclass(frozen=True)
class Found:
    """One migration file as read: what its name says and the scripts it holds."""

    named: FileName
    scripts: list[Script]


def catalog(folder: Path, files: list[Found], unknown: list[str]) -> Catalog:
    """The folder's migrations; MigrationFolderError listing every problem: unknown names,
    mixed formats, a version claimed twice, a down file without its up file."""
    problems = [f"{name}: not a migration file name ({ACCEPTED})" for name in unknown]
    first: dict[Format, str] = {}
    for found in files:
        first.setdefault(found.named.format, found.scripts[0].file)
    if len(first) > 1:
        listed = " and ".join(f"{FORMAT_NAMES[f]} ({name})" for f, name in first.items())
        problems.append(f"the folder mixes formats: {listed}; keep one format per folder")
    if problems:
        raise MigrationFolderError(f"bad migrations in {folder}: " + "; ".join(problems))
    ups: dict[Version, list[Found]] = {}
    downs: dict[Version, list[Found]] = {}
    repeatables: dict[str, list[Found]] = {}
    for found in files:
        named = found.named
        if named.version is None:
            repeatables.setdefault(named.name, []).append(found)
        else:
            (ups if named.role == "up" else downs).setdefault(named.version, []).append(found)
    claims = [(f"version {v.canonical}", g) for v, g in [*ups.items(), *downs.items()]]
    claims += [(f"repeatable {name!r}", g) for name, g in repeatables.items()]
    problems += [
        f"{what} is claimed by {', '.join(f.scripts[0].file for f in group)}"
        for what, group in claims
        if len(group) > 1
    ]
    problems += [f"{group[0].scripts[0].file}: a down file without its up file"
                 for version, group in downs.items() if version not in ups]  # fmt: skip
    if problems:
        raise MigrationFolderError(f"bad migrations in {folder}: " + "; ".join(problems))
    migrations = []
    for version in sorted(ups):
        up = ups[version][0]
        down = downs[version][0].scripts[0] if version in downs else None
        if len(up.scripts) > 1:  # dbmate: the down section of the same file
            down = up.scripts[1]
        migrations.append(Migration(version, up.named.name, up.scripts[0], down))
    for name in sorted(repeatables):
        migrations.append(Migration(None, name, repeatables[name][0].scripts[0], None))
    return Catalog(next(iter(first), None), migrations)
