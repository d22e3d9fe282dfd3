"""The one exception hierarchy of mirrorpool; app/api/errors.py turns it into HTTP answers."""

from __future__ import annotations

from typing import Any


class MirrorpoolError(Exception):
    """Base class of every error mirrorpool raises on purpose."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        # Extra members of the problem document (e.g. `missing`, `statement_index`).
        self.extra = extra


class SettingsError(MirrorpoolError):
    """A setting is missing or has a bad value; the message names the variable."""


class MigrationFolderError(SettingsError):
    """The migration folder cannot be read: a file name no format knows, formats mixed, two
    files for one version, a dbmate file without its sections."""


class DevDBError(MirrorpoolError):
    """The local PostgreSQL pair could not be set up or driven."""


# --- the request is wrong -------------------------------------------------------------


class RequestError(MirrorpoolError):
    """The request cannot be run as sent."""


class InvalidSQL(RequestError):
    """The SQL text is empty, holds more than one statement, or is otherwise unusable."""


class InvalidParameters(RequestError):
    """Parameters are missing, extra, misnamed, or do not match the placeholders."""


class LimitExceeded(RequestError):
    """A request is larger than a configured limit (body, SQL length, parameter count)."""


class PayloadTooLarge(LimitExceeded):
    """The request body is larger than the body limit."""


class UnsupportedMediaType(RequestError):
    """The request body is not in the media type the route takes (JSON)."""


class DuplicateKey(RequestError):
    """A JSON object in the request body names the same key twice."""


class ResultTooLarge(LimitExceeded):
    """A result is over the row or size limit where it must not arrive cut (POST /sql)."""


class Unauthorized(RequestError):
    """No API key, or one that is not valid."""


class TooManyRequests(RequestError):
    """The caller has too many requests in flight."""


class Forbidden(RequestError):
    """The request is understood but not allowed (e.g. raw SQL is switched off)."""


class NotFound(RequestError):
    """The named thing (query, migration) does not exist."""


class Conflict(RequestError):
    """The request conflicts with the current state (e.g. a modified migration)."""


class MigrationDrift(Conflict):
    """Applied migrations differ from the files: edited, removed, or failed half-way."""


# --- the cluster cannot serve ---------------------------------------------------------


class ClusterError(MirrorpoolError):
    """The database cluster cannot serve a request right now."""

    retry_after: int = 1


class NoWriterError(ClusterError):
    """No reachable node accepts writes."""


class NoReaderError(ClusterError):
    """No reachable node can serve a read."""


class PoolExhausted(ClusterError):
    """No pool connection became free within the pool timeout, or too many are waiting."""


class NodeFailed(ClusterError):
    """The node serving the request failed mid-flight (connection lost, shut down)."""


class QueryTimeout(MirrorpoolError):
    """The request overran its deadline; the statement was cancelled."""


class OutcomeUnknown(MirrorpoolError):
    """A write was sent and its connection was lost (or went silent past its bound) before
    its outcome came back: it may or may not have committed. Not to be retried blindly."""


class ClientGone(MirrorpoolError):
    """The HTTP client disconnected; its statement was cancelled."""


# --- the database said no -------------------------------------------------------------


class DatabaseError(MirrorpoolError):
    """PostgreSQL raised an error; carries its SQLSTATE and diagnostic fields."""

    def __init__(self, detail: str, sqlstate: str | None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.sqlstate = sqlstate
