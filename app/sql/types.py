"""Type adaptation both ways: JSON parameters to psycopg, PostgreSQL values to JSON-ready ones.

Results are read in text format through loaders that already produce what the answer holds,
so a whole result set is serialised by one orjson call with no per-row Python work:

    int2, int4, oid       -> int          int8, numeric   -> str (exact)
    float4, float8        -> float, or "NaN" / "Infinity" / "-Infinity"
    bool                  -> bool         text types, uuid -> str
    bytea                 -> base64 str   json, jsonb     -> embedded verbatim (orjson.Fragment)
    date, time, timetz, timestamp, timestamptz -> ISO 8601 str ("infinity" stays)
    interval              -> ISO 8601 duration (the session's IntervalStyle is iso_8601)
    arrays of any of these -> nested lists (psycopg's array loaders use the same map)
    anything else          -> PostgreSQL's text form, as str

Parameters: null, bool, numbers and strings pass through (a string goes untyped, so the
server casts it to whatever it meets); an object binds as jsonb; an array of scalars of one
kind as a PostgreSQL array; any other array as jsonb.
"""

from __future__ import annotations

import binascii
import math
import re
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.postgres import types as builtin_types
from psycopg.types.json import Jsonb
from psycopg.types.string import TextLoader

from app.errors import InvalidParameters

# Given as startup options: RESET ALL brings them back after a session was dirtied.
SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "1",
}

_OUT_OF_RANGE = (
    "a number is too large for a double precision float; send it as a string "
    "(PostgreSQL casts it to numeric exactly)"
)
_FLOAT_SPECIALS = {b"NaN": "NaN", b"Infinity": "Infinity", b"-Infinity": "-Infinity"}
_SHORT_OFFSET = re.compile(r"([+-]\d\d)$")
_TZ_OFFSET = re.compile(r"([+-]\d\d)(?::?(\d\d))?(?::?(\d\d))?$")


class FloatLoader(Loader):
    """float4/float8 -> float; NaN and the infinities -> strings (JSON has no such numbers)."""

    def load(self, data: Buffer) -> Any:
        raw = bytes(data)
        return _FLOAT_SPECIALS.get(raw) or float(raw)


class ByteaLoader(Loader):
    """bytea (text form `\\x...`) -> base64."""

    def load(self, data: Buffer) -> Any:
        return binascii.b2a_base64(binascii.unhexlify(bytes(data)[2:]), newline=False).decode()


class JsonLoader(Loader):
    """json/jsonb -> the stored JSON, embedded verbatim when the answer is serialised."""

    def load(self, data: Buffer) -> Any:
        return orjson.Fragment(bytes(data))


def _iso_year(text: str) -> str:
    """`0044-03-15... BC` -> `-0043-03-15...` (ISO 8601 counts a year 0)."""
    if not text.endswith(" BC"):
        return text
    text = text[:-3]
    year, rest = text.split("-", 1)
    return f"-{int(year) - 1:04d}-{rest}"


def _offset(text: str) -> str:
    """A `+02` or `+0530` offset -> `+02:00` / `+05:30`; a seconds part is kept."""
    match = _TZ_OFFSET.search(text)
    if not match:
        return text
    hours, minutes, seconds = match.groups()
    tail = f"{hours}:{minutes or '00'}" + (f":{seconds}" if seconds else "")
    return text[: match.start()] + tail


class DateLoader(Loader):
    """date -> ISO 8601 (`infinity` as is, BC as a negative year)."""

    def load(self, data: Buffer) -> Any:
        return _iso_year(bytes(data).decode())


class TimestampLoader(Loader):
    """timestamp -> ISO 8601 with a `T`."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode()
        if text[0].isdigit():
            text = _iso_year(text).replace(" ", "T", 1)
        return text


class TimestamptzLoader(Loader):
    """timestamptz -> ISO 8601 with a `T` and a ±HH:MM offset."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode()
        if not text[0].isdigit():
            return text
        bc = text.endswith(" BC")
        if bc:
            text = text[:-3]
        text = _offset(text)
        if bc:
            text += " BC"
        return _iso_year(text).replace(" ", "T", 1)


class TimetzLoader(Loader):
    """timetz -> ISO 8601 with a ±HH:MM offset."""

    def load(self, data: Buffer) -> Any:
        return _offset(bytes(data).decode())


_OVERRIDES: dict[str, type[Loader]] = {
    "float4": FloatLoader,
    "float8": FloatLoader,
    "int8": TextLoader,
    "numeric": TextLoader,
    "bytea": ByteaLoader,
    "json": JsonLoader,
    "jsonb": JsonLoader,
    "date": DateLoader,
    "timestamp": TimestampLoader,
    "timestamptz": TimestamptzLoader,
    "timetz": TimetzLoader,
    "time": TextLoader,
    "interval": TextLoader,
    "uuid": TextLoader,
}
# Scalar types psycopg reads as they come: already JSON-ready.
_KEEP = {"int2", "int4", "oid", "bool", "text", "varchar", "bpchar", "name", '"char"', "char"}
_ARRAY_OIDS = {t.array_oid for t in builtin_types if t.array_oid}


def register_json_loaders(adapters: AdaptersMap) -> None:
    """Make every text-format loader in `adapters` produce a JSON-ready value."""
    text_loaders = adapters._loaders[0]  # psycopg has no public listing of its loaders
    for oid in list(text_loaders):
        if oid in _ARRAY_OIDS or oid == 0:
            continue  # arrays load their elements through this same map
        info = builtin_types.get(oid)
        name = info.name if info else None
        if name in _KEEP:
            continue
        adapters.register_loader(oid, _OVERRIDES.get(name or "", TextLoader))
    for name, loader in _OVERRIDES.items():
        adapters.register_loader(name, loader)


async def register_loaders(conn: AsyncConnection[Any]) -> None:
    """The pool's `configure` callback: no round trip, only loaders."""
    register_json_loaders(conn.adapters)


def to_param(value: Any) -> Any:
    """A JSON value, as psycopg should send it."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidParameters(_OUT_OF_RANGE)
    if isinstance(value, dict):
        return Jsonb(value)
    if isinstance(value, list):
        kind = _array_kind(value)
        if kind is None:
            return Jsonb(value)
        return _as_floats(value) if kind == "float" else value
    return value


def _array_kind(values: list[Any]) -> str | None:
    """The one scalar kind of a (nested) list, None when it holds objects or mixed kinds."""
    kinds: set[str] = set()
    stack = [values]
    while stack:
        for item in stack.pop():
            if isinstance(item, list):
                stack.append(item)
            elif item is None:
                continue
            elif isinstance(item, bool):
                kinds.add("bool")
            elif isinstance(item, int | float):
                if isinstance(item, float) and not math.isfinite(item):
                    raise InvalidParameters(_OUT_OF_RANGE)
                kinds.add("float" if isinstance(item, float) else "int")
            elif isinstance(item, str):
                kinds.add("str")
            else:
                return None
    if kinds == {"int", "float"}:
        return "float"
    if len(kinds) > 1:
        return None
    return kinds.pop() if kinds else "empty"


def _as_floats(values: list[Any]) -> list[Any]:
    return [
        _as_floats(v) if isinstance(v, list) else (float(v) if v is not None else None)
        for v in values
    ]
