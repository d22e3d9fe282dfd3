"""The one exception hierarchy of mirrorpool; app/api/errors.py turns it into HTTP answers."""

from __future__ import annotations


class MirrorpoolError(Exception):
    """Base class of every error mirrorpool raises on purpose."""


class SettingsError(MirrorpoolError):
    """A setting is missing or has a bad value; the message names the variable."""


class DevDBError(MirrorpoolError):
    """The local PostgreSQL pair could not be set up or driven."""


class ClusterError(MirrorpoolError):
    """The database cluster cannot serve a request right now."""


class NoWriterError(ClusterError):
    """No reachable node accepts writes."""


class NoReaderError(ClusterError):
    """No reachable node can serve a read."""
