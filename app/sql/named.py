"""Named queries: an allowlist of .sql files, each one statement with a small header.

    -- description: A user by email address
    -- params: email
    -- read_only: true
    -- timeout_ms: 2000
    SELECT id, email FROM users WHERE email = :email

The name is the file name without `.sql`. Header lines are `-- key: value` comments at the
top of the file; `params` lists the `:name` placeholders the statement uses (checked when
the files are loaded), `read_only` runs it in a READ ONLY transaction (and lets a mirror
serve it), `timeout_ms` sets its own statement timeout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.errors import InvalidParameters, InvalidSQL, MirrorpoolError, SettingsError
from app.sql.placeholders import bind

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HEADER = re.compile(r"--\s*([a-z_]+)\s*:\s*(.*?)\s*$")
_KEYS = {"description", "params", "read_only", "timeout_ms"}


@dataclass(frozen=True)
class NamedQuery:
    """One allowlisted statement."""

    name: str
    sql: str
    params: tuple[str, ...]
    read_only: bool
    description: str
    timeout_ms: int | None


def parse(name: str, text: str) -> NamedQuery:
    """Read one query file's header and statement; raise InvalidSQL naming what is wrong."""
    header: dict[str, str] = {}
    for line in text.lstrip("\ufeff").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        match = _HEADER.fullmatch(stripped)
        if not match:
            break
        key, value = match.groups()
        if key not in _KEYS:
            raise InvalidSQL(f"unknown header {key!r} (known: {', '.join(sorted(_KEYS))})")
        header[key] = value
    params = tuple(p.strip() for p in header.get("params", "").split(",") if p.strip())
    read_only = header.get("read_only", "false").lower()
    if read_only not in {"true", "false"}:
        raise InvalidSQL(f"read_only must be true or false, not {read_only!r}")
    timeout = header.get("timeout_ms")
    if timeout is not None and not timeout.isdigit():
        raise InvalidSQL(f"timeout_ms must be a whole number of milliseconds, not {timeout!r}")
    try:
        bound = bind(text, dict.fromkeys(params))
    except InvalidParameters as exc:
        raise InvalidSQL(f"the header's params do not match the SQL: {exc.detail}") from None
    return NamedQuery(
        name=name,
        sql=text,
        params=tuple(bound.names),
        read_only=read_only == "true",
        description=header.get("description", ""),
        timeout_ms=int(timeout) if timeout else None,
    )


def load(folder: Path) -> dict[str, NamedQuery]:
    """Every query in `folder` (none when it does not exist); a bad file stops start-up."""
    if not folder.is_dir():
        return {}
    queries: dict[str, NamedQuery] = {}
    problems = []
    for path in sorted(folder.glob("*.sql")):
        name = path.stem
        if not _NAME.fullmatch(name):
            problems.append(f"{path.name}: a name may hold letters, digits, '_', '.' and '-'")
            continue
        try:
            queries[name] = parse(name, path.read_text(encoding="utf-8"))
        except (MirrorpoolError, UnicodeDecodeError) as exc:
            problems.append(f"{path.name}: {exc}")
    if problems:
        raise SettingsError(f"bad named queries in {folder}: " + "; ".join(problems))
    return queries
