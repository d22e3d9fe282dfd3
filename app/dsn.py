"""Connection strings: splitting lists, checking them, and describing them without secrets."""

from __future__ import annotations

import re

from psycopg import conninfo as pg_conninfo
from psycopg import errors as pg_errors

# A comma starts a new DSN only where the next text begins one: a URI scheme or a `key=`.
# Commas inside quoted values and inside multi-host URIs ("h1:5432,h2:5432") stay put.
_NEXT_DSN = re.compile(r"\s*(?:postgres(?:ql)?://|[A-Za-z_]+\s*=)")


class InvalidDSN(ValueError):
    """A connection string libpq cannot parse; the message never repeats the string."""


def split_dsn_list(text: str) -> list[str]:
    """Split a comma-separated list of DSNs (libpq key=value or URI form)."""
    parts: list[str] = []
    start = 0
    quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quote:
            i += 2
            continue
        if ch == "'":
            quote = not quote
        elif ch == "," and not quote and _NEXT_DSN.match(text, i + 1):
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_dsn(dsn: str) -> dict[str, str]:
    """Parse a DSN into its parameters, raising InvalidDSN with a message safe to print."""
    if not dsn.strip():
        raise InvalidDSN("is empty")
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except pg_errors.ProgrammingError:
        raise InvalidDSN(
            "is not a valid libpq connection string (use key=value pairs or a postgresql:// URI)"
        ) from None
    parsed = {k: str(v) for k, v in params.items() if v is not None}
    ports = parsed["port"].split(",") if parsed.get("port") else []
    if any(not p.strip().isdigit() or not 0 < int(p) < 65536 for p in ports):
        raise InvalidDSN("has a port that is not a number from 1 to 65535")
    return parsed


def describe_dsn(dsn: str) -> str:
    """Say where a DSN points, as `host:port/dbname`, leaving out user and password."""
    params = parse_dsn(dsn)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"


def dsn_secrets(dsn: str) -> list[str]:
    """The secret values a DSN carries (its password), for log scrubbing."""
    try:
        params = parse_dsn(dsn)
    except InvalidDSN:
        return []
    password = params.get("password", "")
    return [password] if password else []


def with_defaults(dsn: str, **defaults: str | int) -> str:
    """The DSN with parameters added where it does not set them itself."""
    params: dict[str, str | int] = dict(defaults)
    params.update(parse_dsn(dsn))
    return pg_conninfo.make_conninfo("", **params)


def with_overrides(dsn: str, **overrides: str | int) -> str:
    """The DSN with these parameters replaced."""
    params: dict[str, str | int] = dict(parse_dsn(dsn))
    params.update(overrides)
    return pg_conninfo.make_conninfo("", **params)


def as_login(dsn: str, user: str, password: str | None = None) -> str:
    """The DSN of the same server and database for another login: its user replaced, and
    the DSN's own password dropped (the login's comes from `password`, or from libpq's
    password file, PGPASSFILE or ~/.pgpass)."""
    params: dict[str, str | int] = dict(parse_dsn(dsn))
    params["user"] = user
    params.pop("password", None)
    if password is not None:
        params["password"] = password
    return pg_conninfo.make_conninfo("", **params)
