"""The values the query engine's parts need, taken from Settings once, at start-up.

The engine, its lanes and statement preparation read these small frozen records, never the
whole Settings: what a part depends on is in its constructor, and a test can build one
without configuring a service.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import Settings


@dataclass(frozen=True, slots=True)
class LaneOptions:
    """What the multiplexing lanes need (app/sql/multiplex.py)."""

    pool_max_size: int
    pool_max_waiting: int
    pool_timeout: float
    statement_timeout_ms: int
    max_response_bytes: int
    # A statement joins the lanes once it has run in under this long.
    quick_s: float = 0.005
    # Plain writes may share the lanes too (MIRRORPOOL_MULTIPLEX_WRITES).
    writes: bool = True

    @classmethod
    def of(cls, settings: Settings) -> LaneOptions:
        """The lanes' values from the service's settings."""
        return cls(
            pool_max_size=settings.pool_max_size,
            pool_max_waiting=settings.pool_max_waiting,
            pool_timeout=settings.pool_timeout,
            statement_timeout_ms=settings.statement_timeout_ms,
            max_response_bytes=settings.max_response_bytes,
            quick_s=settings.multiplex_quick_ms / 1000,
            writes=settings.multiplex_writes,
        )


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What the engine needs (app/sql/engine.py)."""

    # False behind a transaction pooler (MIRRORPOOL_PGBOUNCER): a pooled connection is then
    # no server session of our own.
    own_sessions: bool
    # Quick plain reads share connections through lanes (MIRRORPOOL_MULTIPLEX).
    multiplex: bool
    # No key holds more than its share of a pool (app/cluster/share.py).
    shares: bool
    pool_timeout: float
    plain_reads_from_mirror: bool
    statement_timeout_ms: int
    lock_timeout_ms: int
    max_response_bytes: int
    lanes: LaneOptions
    # How often the catalog is read for code out of the tree's sight (app/sql/schema_code.py).
    schema_refresh_s: float = 1.0

    @classmethod
    def of(cls, settings: Settings) -> EngineOptions:
        """The engine's values from the service's settings."""
        return cls(
            own_sessions=not settings.pgbouncer,
            multiplex=settings.multiplex,
            # With one key or none (auth disabled) there is no other key to share with.
            shares=(
                settings.auth == "keys"
                and settings.key_max_pool_share < 1
                and len(settings.all_api_keys()) > 1
            ),
            pool_timeout=settings.pool_timeout,
            plain_reads_from_mirror=settings.plain_reads_from_mirror,
            statement_timeout_ms=settings.statement_timeout_ms,
            lock_timeout_ms=settings.lock_timeout_ms,
            max_response_bytes=settings.max_response_bytes,
            lanes=LaneOptions.of(settings),
            schema_refresh_s=settings.schema_refresh_s,
        )


@dataclass(frozen=True, slots=True)
class StatementRules:
    """What statement preparation checks a request's SQL and parameters against
    (app/sql/statement.py)."""

    max_sql_length: int
    max_params: int
    max_json_depth: int
    # Behind PgBouncer: refuse what would change the shared server session.
    pgbouncer: bool

    @classmethod
    def of(cls, settings: Settings) -> StatementRules:
        """The rules from the service's settings."""
        return cls(
            max_sql_length=settings.max_sql_length,
            max_params=settings.max_params,
            max_json_depth=settings.max_json_depth,
            pgbouncer=settings.pgbouncer,
        )
