"""Settings: every knob of mirrorpool, read from MIRRORPOOL_* variables or a .env file."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.dsn import InvalidDSN, parse_dsn, split_dsn_list
from app.errors import SettingsError
from app.settings_keys import ApiKeyConfig, read_keys_file

# ApiKeyConfig lives in app/settings_keys.py; it is named here too, where it has always been.
__all__ = [
    "ENV_PREFIX",
    "ApiKeyConfig",
    "LogLevel",
    "Settings",
    "describe_validation_error",
    "load_settings",
]

ENV_PREFIX = "MIRRORPOOL_"


class LogLevel(StrEnum):
    """Log levels, named as the logging module names them."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Settings(BaseSettings):
    """mirrorpool's configuration; each field is the variable MIRRORPOOL_<FIELD NAME>."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        validate_default=True,
    )

    primary_dsn: SecretStr | None = Field(
        None, description="DSN of the primary (libpq key=value or postgresql:// URI)."
    )
    mirror_dsn: SecretStr | None = Field(
        None, description="DSN of the mirror, or a comma-separated list of mirrors."
    )
    pgbouncer: bool = Field(
        False,
        description="The DSNs lead to PgBouncer (or another pooler) in transaction mode: no "
        "server-side prepared statements or startup options, every request in a transaction "
        "that sets what it relies on, statements that change the session refused. Needs "
        "MIRRORPOOL_MIGRATIONS_DSN.",
    )
    migrations_dsn: SecretStr | None = Field(
        None,
        description="DSN migrations use instead of the writer's: a direct connection to the "
        "primary, which keeps the session advisory lock (required with MIRRORPOOL_PGBOUNCER).",
    )
    pool_min_size: int = Field(2, ge=0, description="Connections each node's pool keeps open.")
    pool_max_size: int = Field(10, ge=1, description="Most connections a node's pool opens.")
    pool_timeout: float = Field(
        5.0, gt=0, description="Seconds a request waits for a pool connection before a 503."
    )
    pool_max_waiting: int = Field(
        100, ge=0, description="Requests that may queue for a connection per node (0: no limit)."
    )
    pool_max_lifetime: float = Field(
        3600.0, gt=0, description="Seconds after which a pool connection is replaced."
    )
    pool_max_idle: float = Field(
        600.0, gt=0, description="Seconds an idle connection above the minimum is kept."
    )
    connect_timeout: int = Field(
        5, ge=1, description="Seconds to establish a database connection (libpq connect_timeout)."
    )
    health_interval: float = Field(
        1.0, ge=0.1, description="Seconds between health probes of each node (fractions allowed)."
    )
    health_timeout: float = Field(
        1.0, gt=0, description="Seconds a health probe may take before it counts as failed."
    )
    health_threshold: int = Field(
        2, ge=1, description="Consecutive failed probes that mark a node down."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address the HTTP server binds.")
    auth: Literal["keys", "disabled"] = Field(
        "keys", description="keys: every request but /health needs an API key; disabled: none."
    )
    api_keys: list[ApiKeyConfig] = Field(
        default_factory=list,
        description='JSON list of {"id", "sha256", "scopes", "role"}; only key hashes.',
    )
    api_keys_file: Path | None = Field(None, description="A file holding the same JSON list.")
    role_passwords: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON object {"role": "password"} for the logins of keys with a role; a '
        "role missing here logs in with libpq's password file (PGPASSFILE, ~/.pgpass).",
    )
    role_pool_max_size: int = Field(
        4, ge=1, description="Most connections a node's pool for one key role opens."
    )
    allow_superuser: bool = Field(
        False,
        description="Serve through a login that is a superuser, may create roles, bypasses "
        "row-level security or reads/writes server files and programs (refused otherwise).",
    )
    key_max_pool_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Largest part of a node's pool (and of each role's pool) one key may hold; "
        "a key at its share waits in its own line (1: no limit; with one key or none it "
        "does not apply).",
    )
    max_inflight_per_key: int = Field(
        64, ge=1, description="Requests one key may have in flight (429 beyond)."
    )
    allow_remote_without_auth: bool = Field(
        False, description="With MIRRORPOOL_AUTH=disabled, allow binding beyond loopback."
    )
    pool_stats_public: bool = Field(False, description="Serve /pool/stats without a key.")
    docs_public: bool = Field(True, description="Serve /docs and /openapi.json.")
    metrics_public: bool = Field(True, description="Serve /metrics without a key.")
    max_json_depth: int = Field(32, ge=1, le=1000, description="Deepest nesting of params.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server listens on.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    log_level: LogLevel = Field(LogLevel.INFO, description="debug, info, warning or error.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people, json (one object per line) for log pipelines."
    )
    shutdown_timeout: float = Field(
        10.0, ge=0, description="Seconds in-flight requests get to finish at shutdown."
    )
    application_name: str = Field(
        "mirrorpool", min_length=1, description="application_name of mirrorpool's connections."
    )
    read_from_mirror: bool = Field(
        False, description="Send read-only requests to a mirror whose lag is under the limit."
    )
    plain_reads_from_mirror: bool = Field(
        True,
        description="While no node takes writes, serve requests that the parser shows to be "
        "pure reads from a mirror, read_only or not (false for clients that must read their "
        "own writes: they get 503 no-writer instead).",
    )
    max_replica_lag_ms: int = Field(
        1_000, ge=0, description="Most replay lag a mirror may have to serve reads."
    )
    schema_refresh_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How often the catalog is checked for code that statements run out of the "
        "parser's sight (views, triggers, defaults, policies, and the database's own function "
        "names), whose effects get a connection reset; at once after a schema change made "
        "through mirrorpool, every this many seconds for changes made around it.",
    )
    promote_after_s: float | None = Field(
        None,
        gt=0,
        description="Promote the least-lagged mirror after the primary has been unreachable "
        "this long (single instance without an HA manager only; unset: never).",
    )
    statement_timeout_ms: int = Field(
        30_000, ge=1, description="Default statement timeout of a request, in milliseconds."
    )
    max_statement_timeout_ms: int = Field(
        300_000, ge=1, description="Largest timeout_ms a request may ask for."
    )
    lock_timeout_ms: int = Field(
        5_000, ge=0, description="lock_timeout of every statement, in milliseconds (0: none)."
    )
    max_rows: int = Field(10_000, ge=1, description="Default max_rows of /v1/query.")
    max_rows_ceiling: int = Field(
        1_000_000, ge=1, description="Largest max_rows a request may ask for."
    )
    max_response_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest /v1/query response; rows beyond it are cut."
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest header block (request line and headers) of a request (431 beyond).",
    )
    max_headers: int = Field(
        100, ge=8, description="Most header fields a request may carry (431 beyond)."
    )
    request_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a request may take to arrive whole, headers and body, from its "
        "first byte (408 and the connection closed beyond).",
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="Seconds an idle keep-alive connection is kept open (whole)."
    )
    health_details: Literal["key", "public"] = Field(
        "key",
        description="key: /health shows hosts, ports and error texts only to a key with the "
        "read scope; public: to anyone.",
    )
    max_sql_length: int = Field(100_000, ge=1, description="Longest SQL text, in characters.")
    max_params: int = Field(
        10_000, ge=0, le=65_535, description="Most parameters one statement may carry."
    )
    max_statements: int = Field(100, ge=1, description="Most statements in one transaction.")
    stream_idle_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Seconds a /v1/query/stream client may read nothing before the stream, "
        "and its transaction, is ended.",
    )
    stream_chunk_rows: int = Field(
        1_000, ge=1, description="Rows fetched per round trip by /v1/query/stream."
    )
    queries_dir: Path = Field(
        Path("queries"), description="Folder of named queries (.sql files); may be absent."
    )
    migrations_dir: Path = Field(
        Path("migrations"),
        description="Folder of migrations, read live: mirrorpool's own (golang-migrate's) "
        "NNNN_name.up.sql / .down.sql, Flyway's V/U/R files or dbmate's one-file format.",
    )
    migration_lock_timeout_ms: int = Field(
        2_000, ge=1, description="lock_timeout of each migration step, in milliseconds."
    )
    migration_statement_timeout_ms: int = Field(
        0, ge=0, description="statement_timeout of transactional migration steps (0: none)."
    )
    migration_lock_wait_s: float = Field(
        5.0, ge=0, description="Seconds to wait for another run's migration lock before a 409."
    )
    fast_path: bool = Field(
        True, description="Serve POST /v1/query without FastAPI's per-request machinery."
    )
    multiplex: bool = Field(
        True,
        description="Pipeline concurrent quick plain statements on shared pool connections, "
        "each on its own (off behind PgBouncer).",
    )
    multiplex_writes: bool = Field(
        True,
        description="Let quick plain writes (INSERT, UPDATE, DELETE, MERGE) share the lanes too, "
        "each its own transaction with its own deadline on the server (false: each takes a "
        "pooled connection of its own).",
    )
    multiplex_quick_ms: float = Field(
        5.0,
        gt=0,
        le=1000,
        description="A plain statement joins the lanes once it has run in under this many "
        "milliseconds; one slower run takes it out.",
    )
    allow_raw_sql: bool = Field(
        True, description="false: only named queries run; /v1/query and friends answer 403."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("primary_dsn", "migrations_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_dsn(value.get_secret_value())
            except InvalidDSN as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("mirror_dsn")
    @classmethod
    def _check_mirror_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            dsns = split_dsn_list(value.get_secret_value())
            if not dsns:
                raise ValueError("is empty")
            for n, dsn in enumerate(dsns, start=1):
                try:
                    parse_dsn(dsn)
                except InvalidDSN as exc:
                    where = f"mirror {n} " if len(dsns) > 1 else ""
                    raise ValueError(f"{where}{exc}") from None
        return value

    @model_validator(mode="after")
    def _check_pool_sizes(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"{ENV_PREFIX}POOL_MIN_SIZE ({self.pool_min_size}) is greater than "
                f"{ENV_PREFIX}POOL_MAX_SIZE ({self.pool_max_size})"
            )
        return self

    @model_validator(mode="after")
    def _check_migrations_dsn(self) -> Self:
        # A session advisory lock taken through a transaction pooler stays on whichever
        # server connection took it; the unlock may reach another one.
        if self.pgbouncer and self.migrations_dsn is None:
            raise ValueError(
                f"{ENV_PREFIX}PGBOUNCER=true needs {ENV_PREFIX}MIGRATIONS_DSN: migrations hold "
                "a session advisory lock, which transaction pooling does not keep; set it to a "
                "direct DSN of the primary (not through PgBouncer)"
            )
        return self

    @model_validator(mode="after")
    def _check_ceilings(self) -> Self:
        if self.statement_timeout_ms > self.max_statement_timeout_ms:
            raise ValueError(
                f"{ENV_PREFIX}STATEMENT_TIMEOUT_MS ({self.statement_timeout_ms}) is greater than "
                f"{ENV_PREFIX}MAX_STATEMENT_TIMEOUT_MS ({self.max_statement_timeout_ms})"
            )
        if self.max_rows > self.max_rows_ceiling:
            raise ValueError(
                f"{ENV_PREFIX}MAX_ROWS ({self.max_rows}) is greater than "
                f"{ENV_PREFIX}MAX_ROWS_CEILING ({self.max_rows_ceiling})"
            )
        return self

    def check_auth(self) -> None:
        """Refuse to serve open by accident: keys are required unless auth is disabled, and
        without auth only loopback is served unless told otherwise."""
        if self.auth == "keys" and not self.all_api_keys():
            raise SettingsError(
                f"no API keys are configured: set {ENV_PREFIX}API_KEYS or "
                f"{ENV_PREFIX}API_KEYS_FILE, or {ENV_PREFIX}AUTH=disabled to run without "
                "authentication"
            )
        if (
            self.auth == "disabled"
            and self.host not in _LOOPBACK
            and not self.allow_remote_without_auth
        ):
            raise SettingsError(
                f"{ENV_PREFIX}AUTH=disabled binds to loopback only; set "
                f"{ENV_PREFIX}ALLOW_REMOTE_WITHOUT_AUTH=true to serve {self.host} without keys"
            )

    def all_api_keys(self) -> list[ApiKeyConfig]:
        """The keys from MIRRORPOOL_API_KEYS and MIRRORPOOL_API_KEYS_FILE together."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                keys += read_keys_file(self.api_keys_file)
            except (OSError, ValidationError) as exc:
                raise SettingsError(
                    f"{ENV_PREFIX}API_KEYS_FILE: cannot read keys from {self.api_keys_file}: "
                    + (exc.strerror or "unreadable" if isinstance(exc, OSError) else "bad JSON")
                ) from None
        return keys

    @property
    def mirror_dsns(self) -> list[str]:
        """The mirror DSNs, in the order given."""
        if self.mirror_dsn is None:
            return []
        return split_dsn_list(self.mirror_dsn.get_secret_value())


_SECRET_FIELDS = {"primary_dsn", "mirror_dsn", "migrations_dsn", "api_keys", "role_passwords"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad variable and what is wrong with it, never a secret value."""
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            field = str(err["loc"][0])
            shown = "" if field in _SECRET_FIELDS else f" (got {err['input']!r})"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {msg}{shown}")
        else:
            problems.append(msg)
    return "invalid settings: " + "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, raising SettingsError with one readable line when a value is bad."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
