"""Type adaptation both ways: JSON parameters to psycopg, PostgreSQL values to JSON-ready ones.

Results are read in text format through loaders that already produce what the answer holds,
so a whole result set is serialised by one `orjson.dumps` call with no per-row Python work:

    int2, int4, oid        -> int
    int8, numeric          -> str, exact ("NaN", "Infinity", "-Infinity" for numeric's specials)
    float4, float8         -> float; NaN and the infinities -> "NaN", "Infinity", "-Infinity"
    bool                   -> bool
    text, varchar, bpchar, name, "char", uuid -> str
    bytea                  -> base64 str (standard alphabet, padded)
    date                   -> "2024-01-02"; BC as an astronomical year: 44 BC -> "-0043-..."
    time, timetz           -> "03:04:05.5", "03:04:05+02:00" (offsets always ±HH:MM)
    timestamp, timestamptz -> "2024-01-02T03:04:05.5", "2024-01-02T03:04:05+00:00" (UTC)
    date/timestamp(tz) infinity -> "infinity", "-infinity"
    interval               -> ISO 8601 duration, as printed by IntervalStyle=iso_8601
    json, jsonb            -> orjson.Fragment: the stored text embedded verbatim
    arrays of any of these -> nested lists with None (psycopg's array loaders, same map)
    anything else          -> PostgreSQL's text form, as str: inet, cidr, ranges, multiranges,
                              records, money, geometric types, xml, enums, extension types, ...

Parameters (`to_param`, one JSON value as parsed from the request):

    null, bool, int, float -> as is (psycopg types an int as the smallest integer type it fits)
    str                    -> as is, sent untyped: the server casts it to what it meets
                              (`$1::uuid`, `created_at > $1`, `numeric_col = $1`)
    object                 -> jsonb
    array of scalars of one kind (all strings, all bools or all numbers, nulls allowed),
    nested to any depth with equal-length sub-arrays -> a PostgreSQL array (`= ANY($1)`);
                              ints mixed with floats become float8[]
    any other array        -> jsonb (it holds objects, mixes kinds, or is ragged)
"""

from __future__ import annotations

import math
from binascii import b2a_base64, unhexlify
from typing import Any

import orjson
from psycopg import AsyncConnection, sql
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.postgres import types as builtin_types
from psycopg.pq import Format
from psycopg.types.json import Jsonb
from psycopg.types.string import TextLoader

from app.errors import InvalidParameters

# The loaders below parse what PostgreSQL prints under exactly these settings.
# app/main.py gives them as startup options too, so `RESET ALL` brings them back.
SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    # Shortest text that reads back as the same float (PostgreSQL 12+ for any value > 0).
    "extra_float_digits": "1",
    "bytea_output": "hex",
    # The loaders decode UTF-8; with SQL_ASCII psycopg's TextLoader would even return bytes.
    "client_encoding": "UTF8",
    # The parse tree (app/sql/tree.py) reads string literals as they are with this on.
    "standard_conforming_strings": "on",
    # A backend whose client went away (mirrorpool shuts the socket of a request past its
    # deadline) notices within a second and stops, instead of running on to its end.
    "client_connection_check_interval": "1s",
}

_NOT_FINITE = (
    "a number is NaN, infinite or too large for a double precision float; send it as a "
    'string ("NaN", "Infinity" or its digits) and PostgreSQL casts it exactly'
)


class JsonReadyLoader(Loader):
    """Base of the loaders below: text-format data in, a value orjson can write out."""

    format = Format.TEXT


class FloatLoader(JsonReadyLoader):
    """float4/float8 -> float; NaN and the infinities -> strings (JSON has no such numbers)."""

    def load(self, data: Buffer) -> Any:
        number = float(data)
        if number - number == 0:  # finite: for NaN and the infinities this is NaN
            return number
        if math.isnan(number):
            return "NaN"
        return "Infinity" if number > 0 else "-Infinity"


class ByteaLoader(JsonReadyLoader):
    """bytea -> base64. Text-format bytea is `\\x` and hex digits (bytea_output=hex)."""

    def load(self, data: Buffer) -> Any:
        return b2a_base64(unhexlify(data[2:]), newline=False).decode()


class JsonLoader(JsonReadyLoader):
    """json/jsonb -> the stored JSON, embedded verbatim when the answer is serialised."""

    def load(self, data: Buffer) -> Any:
        return orjson.Fragment(bytes(data))


class DateLoader(JsonReadyLoader):
    """date -> ISO 8601 ("infinity" as is, BC as a negative astronomical year)."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode()
        return _astronomical(text) if text.endswith(" BC") else text


class TimestampLoader(JsonReadyLoader):
    """timestamp -> ISO 8601 with a `T` ("infinity" as is)."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode()
        if text.endswith(" BC"):
            text = _astronomical(text)
        return text.replace(" ", "T", 1)


class TimestamptzLoader(JsonReadyLoader):
    """timestamptz -> ISO 8601 with a `T` and a ±HH:MM offset ("infinity" as is)."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode()
        if text.endswith(" BC"):
            text = _astronomical(text)
        return _full_offset(text).replace(" ", "T", 1)


class TimetzLoader(JsonReadyLoader):
    """timetz -> ISO 8601 with a ±HH:MM offset."""

    def load(self, data: Buffer) -> Any:
        return _full_offset(bytes(data).decode())


def _astronomical(text: str) -> str:
    """`0044-03-15... BC` -> `-0043-03-15...`: ISO 8601 counts 1 BC as year 0."""
    year, rest = text[:-3].split("-", 1)
    astronomical = 1 - int(year)
    return f"{astronomical:05d}-{rest}" if astronomical else f"0000-{rest}"


def _full_offset(text: str) -> str:
    """PostgreSQL prints a whole-hour offset as `+02`; ISO 8601 wants `+02:00`.

    `+05:30` is kept, and so is the rare `+00:19:32` of a local mean time zone (lossless,
    though beyond ISO 8601); only a session that changed TimeZone sees either.
    """
    return text + ":00" if text[-3] in "+-" else text


# Builtin scalar types whose default (C) loaders already give JSON-ready values.
_KEPT = frozenset({"bool", "int2", "int4", "oid", "text", "varchar", "bpchar", "name", '"char"'})
_CONVERTED: dict[str, type[Loader]] = {
    "float4": FloatLoader,
    "float8": FloatLoader,
    "bytea": ByteaLoader,
    "json": JsonLoader,
    "jsonb": JsonLoader,
    "date": DateLoader,
    "timestamp": TimestampLoader,
    "timestamptz": TimestamptzLoader,
    "timetz": TimetzLoader,
}
# Every other builtin type gets psycopg's C TextLoader, which returns the text as str. That
# replaces the defaults giving Python objects (int8 and numeric too: Decimal, int; time and
# interval; uuid; inet/cidr; record; ranges; multiranges) and costs nothing for the types
# that had no loader. Array types are not in the registry's iteration: psycopg's array
# loaders stay and find these element loaders in the same map. Unknown OIDs (enums,
# composites, citext, hstore, ...) already fall back to the TextLoader of OID 0.
_LOADERS: dict[int, type[Loader]] = {
    info.oid: _CONVERTED.get(info.name, TextLoader)
    for info in builtin_types
    if info.name not in _KEPT
}


def register_json_loaders(adapters: AdaptersMap) -> None:
    """Make `adapters` load every text-format value as a JSON-ready one."""
    for oid, loader in _LOADERS.items():
        adapters.register_loader(oid, loader)


async def register_loaders(conn: AsyncConnection[Any]) -> None:
    """The pool's `configure` callback when SESSION_SETTINGS came as startup options: no
    round trip, and `RESET ALL` keeps the settings."""
    register_json_loaders(conn.adapters)


async def configure_connection(conn: AsyncConnection[Any]) -> None:
    """The pool's `configure` callback for connections opened without SESSION_SETTINGS as
    startup options: the loaders, and the settings in one round trip; leaves the connection
    idle. (A later `RESET ALL` would undo these settings; startup options survive it.)"""
    register_json_loaders(conn.adapters)
    await conn.execute(_set_session_query(SESSION_SETTINGS))
    if not conn.autocommit:
        await conn.commit()  # set_config(..., false) is undone by a rollback


def _set_session_query(settings: dict[str, str]) -> sql.Composed:
    """One statement setting them all: a SELECT is one round trip, whatever the cursor."""
    calls = [
        sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
        for name, value in settings.items()
    ]
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join(calls))


def to_param(value: Any) -> Any:
    """A JSON value, as psycopg should send it (see the module docstring)."""
    if isinstance(value, float):
        # The request's JSON parser turns 1e400 into inf; sending that would change the value.
        if value - value != 0:
            raise InvalidParameters(_NOT_FINITE)
        return value
    if isinstance(value, dict):
        return Jsonb(value)
    if isinstance(value, list):
        return _list_param(value)
    return value


# The kind of each JSON scalar, for "one kind per array". Exact types: bool is an int too.
_KINDS: dict[type, str] = {str: "str", bool: "bool", int: "int", float: "float", type(None): "null"}


def _list_param(values: list[Any]) -> Any:
    """A PostgreSQL array when the list can be one, else jsonb."""
    kinds: set[str] = set()
    if _shape(values, kinds) is None:
        return Jsonb(values)
    kinds.discard("null")
    if kinds == {"int", "float"}:
        try:
            return _as_floats(values)  # psycopg types a list by its first item
        except OverflowError:
            raise InvalidParameters(_NOT_FINITE) from None
    return values if len(kinds) <= 1 else Jsonb(values)


def _shape(values: list[Any], kinds: set[str]) -> tuple[int, ...] | None:
    """The dimensions of a nested list of scalars, adding their kinds to `kinds`; None when
    PostgreSQL could not take it as an array: objects inside, or sub-lists of different
    lengths or depths, or empty ones."""
    if values and type(values[0]) is list:
        inner = _shape(values[0], kinds)
        if inner is None or inner[0] == 0:
            return None
        for item in values[1:]:
            if type(item) is not list or _shape(item, kinds) != inner:
                return None
        return (len(values), *inner)
    for item in values:
        kind = _KINDS.get(type(item))
        if kind is None:
            return None
        if kind == "float" and item - item != 0:
            raise InvalidParameters(_NOT_FINITE)
        kinds.add(kind)
    return (len(values),)


def _as_floats(values: list[Any]) -> list[Any]:
    return [_as_floats(v) if type(v) is list else (None if v is None else float(v)) for v in values]
